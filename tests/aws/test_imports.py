"""Adapters do no I/O and no heavy imports at import time: Lambda cold starts pay only for what a request uses."""

from __future__ import annotations

import subprocess
import sys

from tests.aws.support import REPO


def test_importing_the_adapter_and_the_lambda_module_imports_no_boto3():
    code = (
        "import sys, tessera.core.backends.aws, tessera.core.backends.aws_access, tessera.handlers.lambda_; "
        "print(','.join(m for m in ('boto3', 'botocore', 'fastapi', 'mangum') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""
