import subprocess
import sys

CORE = ["config", "phantom", "decode", "manifest", "dataset", "transforms", "models", "losses", "splits",
        "metrics", "engine", "cam", "shape", "predictor", "checkpoint", "modelcard", "training", "cli"]


def test_importing_the_core_loads_no_ray():
    code = ("import sys\n" + "".join(f"import thyro.{m}\n" for m in CORE) +
            "bad = sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.'))\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True)
