import pkgutil
import subprocess
import sys

import thyro


def test_importing_the_core_loads_no_ray():
    """Every module outside thyro.distributed (the Ray shell) imports without Ray."""
    core = [m.name for m in pkgutil.walk_packages(thyro.__path__, "thyro.")
            if not m.name.startswith("thyro.distributed")]
    assert len(core) > 40  # the walk found the layers, not just the top level
    code = ("import sys\n" + "".join(f"import {m}\n" for m in core) +
            "bad = sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.'))\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True)
