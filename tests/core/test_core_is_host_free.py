import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_core_packages_import_without_comfyui():
    code = textwrap.dedent(f"""
        import importlib.util, sys
        spec = importlib.util.spec_from_file_location(
            "guidance_lab", {str(REPO / '__init__.py')!r}, submodule_search_locations=[{str(REPO)!r}])
        mod = importlib.util.module_from_spec(spec); sys.modules["guidance_lab"] = mod
        spec.loader.exec_module(mod)
        import guidance_lab.guiders, guidance_lab.samplers, guidance_lab.default_model.dataset, guidance_lab.quality.shapes
        bad = sorted(m for m in sys.modules if m.split(".")[0] in ("comfy", "comfy_api", "nodes", "folder_paths"))
        assert not bad, bad
    """)
    subprocess.run([sys.executable, "-c", code], check=True)
