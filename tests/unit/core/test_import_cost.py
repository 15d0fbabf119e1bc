"""Importing packager and its CLI must stay cheap: heavy libraries load only inside the functions that use them."""
import json
import subprocess
import sys

HEAVY = ["torch", "vllm", "gptqmodel", "transformers", "bentoml", "mlflow", "locust", "gevent"]


def test_cli_import_loads_no_heavy_library():
    code = ("import sys, json, packager, packager.cli, packager.config, packager.evaluate.runner; "
            f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
