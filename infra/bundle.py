"""Build the Lambda code bundle (``infra/.build/``, the template's ``CodeUri``): only what Lambda runs.

    .venv/bin/python infra/bundle.py                      # Lambda's platform: manylinux x86_64, CPython 3.12
    .venv/bin/python infra/bundle.py --python-version 3.11 --native --out /tmp/bundle   # this machine (measuring)

What goes in, and what is left out:

- Tessera's wheel without its SDK dependencies (httpx, websockets, tenacity: the functions never call a server),
  and without the packages Lambda never imports: ``tessera.client`` (SDK, CLI), ``tessera.local`` (``tessera
  serve``), ``tessera.handlers.ui`` (the console is not served on Lambda).
- Its dependencies for Lambda, read from pyproject.toml (the base install and the ``[aws]`` extra): botocore (not
  boto3: no s3transfer, no resources), Powertools (the audit line), Mangum, FastAPI, pydantic, cryptography, PyYAML,
  orjson, cachetools, python-dotenv. No uvicorn, uvloop, typer, rich, pygments, jinja2.
- botocore's data pruned to the services the functions call (DynamoDB, S3, KMS, STS, the WebSocket Management
  API), and ``endpoints.json`` to their entries: besides the size, every client's creation lists every service
  directory and parses that file (1.2 MB), so this is a quarter of creating the clients.
- Every module compiled ahead (``unchecked-hash`` .pyc: Lambda's file system is read-only, so it could never
  cache them itself); tests, type stubs and caches removed.

Prints the bundle's size (unzipped and zipped) as JSON.
"""

from __future__ import annotations

import argparse
import compileall
import gzip
import io
import json
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# From pyproject.toml: the base install and the [aws] extra, less the SDK's client libraries (the functions never
# call a server) and boto3 (botocore is all they use).
LEFT_OUT = {"httpx", "websockets", "tenacity", "boto3"}
BOTOCORE_SERVICES = {"dynamodb", "s3", "kms", "apigatewaymanagementapi", "sts"}
ENDPOINT_SERVICES = {"dynamodb", "s3", "kms", "sts", "execute-api"}  # endpoints.json names the Management API execute-api
UNUSED_PACKAGES = ["tessera/client", "tessera/local", "tessera/handlers/ui", "bin"]


def requirements() -> list[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = [*project["dependencies"], *project["optional-dependencies"]["aws"]]
    kept = [spec for spec in wanted if re.split(r"[<>=!~\[ ;]", spec, maxsplit=1)[0].lower() not in LEFT_OUT]
    return [*dict.fromkeys(kept), "botocore>=1.34"]


def build(out: Path, python_version: str, native: bool) -> None:
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    with tempfile.TemporaryDirectory() as wheels:
        subprocess.run([*pip, "wheel", str(REPO), "--no-deps", "-w", wheels], check=True)
        wheel = next(Path(wheels).glob("tessera_config-*.whl"))
        platform = [] if native else ["--platform", "manylinux2014_x86_64", "--implementation", "cp",
                                      "--python-version", python_version, "--only-binary=:all:"]  # fmt: skip
        subprocess.run([*pip, "install", "--target", str(out), "--no-deps", str(wheel)], check=True)
        subprocess.run([*pip, "install", "--target", str(out), *platform, *requirements()], check=True)
    prune(out)
    compileall.compile_dir(out, quiet=2, workers=1, invalidation_mode=compileall.py_compile.PycInvalidationMode.UNCHECKED_HASH)


def prune(out: Path) -> None:
    for relative in UNUSED_PACKAGES:
        shutil.rmtree(out / relative, ignore_errors=True)
    data = out / "botocore" / "data"
    for service in data.iterdir():
        if service.is_dir() and service.name not in BOTOCORE_SERVICES:
            shutil.rmtree(service)
    # Every client's creation parses endpoints.json (1.2 MB, every service of every partition): keep ours.
    endpoints = json.loads((data / "endpoints.json").read_text())
    for partition in endpoints["partitions"]:
        partition["services"] = {name: spec for name, spec in partition["services"].items() if name in ENDPOINT_SERVICES}
    (data / "endpoints.json").write_text(json.dumps(endpoints, separators=(",", ":")))
    for packed in data.rglob("*.json.gz"):  # read without inflating them at every client's creation
        packed.with_suffix("").write_bytes(gzip.decompress(packed.read_bytes()))
        packed.unlink()
    for pattern in ("**/__pycache__", "**/tests", "**/*.pyi"):
        for path in list(out.glob(pattern)):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            elif path.exists():
                path.unlink()


def size(out: Path) -> dict[str, float]:
    files = [path for path in out.rglob("*") if path.is_file()]
    unzipped = sum(path.stat().st_size for path in files)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in files:
            archive.write(path, path.relative_to(out))
    return {"files": len(files), "unzipped_mb": round(unzipped / 1e6, 1), "zipped_mb": round(len(buffer.getvalue()) / 1e6, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "infra" / ".build")
    parser.add_argument("--python-version", default="3.12")
    parser.add_argument("--native", action="store_true", help="this machine's interpreter and platform (for measuring)")
    args = parser.parse_args()
    build(args.out, args.python_version, args.native)
    if args.native:
        check(args.out)
    print(json.dumps({"bundle": str(args.out), **size(args.out)}))


def check(out: Path) -> None:
    """This machine's build, alone on the path: the Lambda entry builds at import and answers an unmatched route."""
    probe = (
        "import json, tessera.handlers.lambda_ as entry\n"
        "event = {'version': '2.0', 'rawPath': '/nope', 'rawQueryString': '', 'headers': {},\n"
        "         'requestContext': {'http': {'method': 'GET', 'path': '/nope', 'sourceIp': '127.0.0.1'}}}\n"
        "assert entry.handler(event, None)['statusCode'] == 404\n"
    )
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(out), "AWS_LAMBDA_FUNCTION_NAME": "bundle-check",
           "AWS_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x", "TESSERA_BACKEND": "aws",
           "TESSERA_BUCKET": "b", "TESSERA_TABLE": "t", "TESSERA_ROOT_TOKEN_SHA256": "0" * 64}  # fmt: skip
    subprocess.run([sys.executable, "-S", "-c", probe], env=env, cwd=out, check=True, timeout=120)


if __name__ == "__main__":
    main()
