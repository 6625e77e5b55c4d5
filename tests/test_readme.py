"""The README's library example runs as written (offline, random weights and images)."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_library_example_runs(tmp_path, monkeypatch) -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    example = next(b for b in blocks if "reflow.prune(" in b)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(example, "README example", "exec"), namespace)
    assert namespace["report"].sparsity_achieved > 0.79
    assert (tmp_path / "resnet18-pruned.pt").is_file() and (
        tmp_path / "resnet18-pruned.json"
    ).is_file()
    assert namespace["again"].fc.out_features == 10
