"""Every Python block of the README and of the documentation pages runs, and does what it says.

A page's blocks run in order in one namespace (later blocks build on earlier ones), in a
temporary working directory, with W&B offline. What a snippet leaves to the reader or would
download is a tiny stand-in under the same name (``tests/docs/stand_ins.py``): torchvision's
``resnet18`` / ``resnet50`` are the same architectures at 1/8 width, and ``model`` /
``datamodule`` ("your LightningModule", "your LightningDataModule") are the callback tests'
16-px classifier and its data. The calls are the snippets' own, unchanged: a fit runs the
epochs the snippet asks for. After the blocks, the page's check reads the results back (the
shapes the comments promise, the keys the monitor logged).
"""

from __future__ import annotations

import math
import re
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import torchvision

from tests.docs.stand_ins import PAGE_STAND_INS, RESNETS, lightning_stand_ins

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs" / "pages").rglob("*.md"))]
PYTHON = {"python", "py", "python3"}
FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>```+|~~~+)[ \t]*(?P<info>[^`\s]*)")
GAP = "Saliency/gap_NGsel"


@dataclass(frozen=True)
class Block:
    line: int
    """1-based line of the block's first code line in its file."""
    language: str
    code: str


def code_blocks(text: str) -> list[Block]:
    """The fenced code blocks of a Markdown text (indented ones, e.g. in a list item, included)."""
    blocks: list[Block] = []
    lines = text.split("\n")
    index = 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if opening is None:
            index += 1
            continue
        fence = opening.group("fence")
        end = index + 1
        while end < len(lines) and lines[end].strip() != fence:
            end += 1
        if end == len(lines):
            raise ValueError(f"Unclosed code block opened at line {index + 1}")
        code = textwrap.dedent("\n".join(lines[index + 1:end]))
        blocks.append(Block(index + 2, opening.group("info").lower(), code))
        index = end + 1
    return blocks


def python_blocks(path: Path) -> list[Block]:
    return [block for block in code_blocks(path.read_text(encoding="utf-8")) if block.language in PYTHON]


def page_id(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def run_blocks(path: Path, namespace: dict[str, Any]) -> None:
    for block in python_blocks(path):
        # padded so that the code's line numbers are the file's: tracebacks show the page's lines
        source = "\n" * (block.line - 1) + block.code
        exec(compile(source, str(path), "exec"), namespace)


# ---- what each page's blocks must have produced -------------------------------------------------


def _fitted(trainer: Any) -> None:
    assert trainer.state.finished, "the fit did not finish"
    assert math.isfinite(float(trainer.callback_metrics[GAP]))


def check_readme(ns: dict[str, Any], ctx: SimpleNamespace) -> None:
    _fitted(ns["trainer"])
    assert ns["trainer"].current_epoch == 5
    assert type(ns["trainer"].logger).__name__ == "WandbLogger"
    assert list((ctx.tmp_path / "wandb").glob("offline-run-*")), "no offline W&B run written"
    assert ns["maps"]["norm_grad_selective"]["layer4"].shape == (4, 1, 7, 7)


def check_index(ns: dict[str, Any], ctx: SimpleNamespace) -> None:
    _fitted(ns["trainer"])


def check_getting_started(ns: dict[str, Any], ctx: SimpleNamespace) -> None:
    _fitted(ns["trainer"])
    assert ns["trainer"].current_epoch == 2


def check_methods(ns: dict[str, Any], ctx: SimpleNamespace) -> None:
    assert list(ns["maps"]) == ["norm_grad_selective", "norm_grad", "conv3x3:norm"]
    assert list(ns["maps"]["norm_grad"]) == ["relu", "layer1", "layer2", "layer3", "layer4"]
    assert ns["maps"]["norm_grad_selective"]["layer3"].shape == (8, 2, 224, 224)
    assert ns["maps"]["norm_grad_selective"]["layer3"].dtype == torch.float32
    assert ns["meta"]["linear_approx"]["layer4"].shape == (8, 2, 7, 7)
    assert len(ns["grid"]) == 30 and ns["NAMED_METHODS"]["norm_grad_selective"] == ("scaling", "filter_norm")


def check_meta_saliency(ns: dict[str, Any], ctx: SimpleNamespace) -> None:
    assert ns["rho"].shape == (4,) and bool(((ns["rho"] > -1) & (ns["rho"] <= 1)).all())
    plain, meta = ns["plain"]["linear_approx"]["layer3"], ns["meta"]["linear_approx"]["layer3"]
    assert not torch.equal(plain, meta), "the meta step changed nothing"
    assert ns["multilabel"]["norm_grad_selective"]["layer4"].shape == (4, 1, 7, 7)


def check_metrics(ns: dict[str, Any], ctx: SimpleNamespace) -> None:
    assert ns["sensitivity"].shape == (4,) and ns["tv"].shape == (4,)
    assert 0 <= float(ns["result"].accuracy) <= 1
    assert ns["combined"].shape == (4, 2, 224, 224) and float(ns["combined"].max()) <= 1
    assert ns["product"].shape == (4, 2, 224, 224)
    for weights in (ns["spread"], ns["accuracy"]):
        assert weights.shape == (2,) and math.isclose(float(weights.sum()), 1.0)


def check_smoothing(ns: dict[str, Any], ctx: SimpleNamespace) -> None:
    assert ns["change"].shape == (4,)
    assert not torch.equal(ns["backward"]["gradient"]["layer1"], ns["plain"]["gradient"]["layer1"])
    assert "layer2.0.conv1" in ns["report"].layers
    assert ns["smooth_maps"]["gradient"]["layer1"].shape == ns["plain"]["gradient"]["layer1"].shape


def check_relevance(ns: dict[str, Any], ctx: SimpleNamespace) -> None:
    assert ns["maps"]["lrp"]["input"].shape == (2, 1, 224, 224)
    assert ns["maps"]["salient_relevance"]["input"].shape == (2, 1, 64, 64)
    assert ns["ssim"].shape == (2,)


def check_monitor(ns: dict[str, Any], ctx: SimpleNamespace) -> None:
    _fitted(ns["trainer"])
    assert (Path(ns["trainer"].logger.log_dir) / "metrics.csv").is_file()
    config = ns["monitor"].config
    assert config.num_train_probes == 8 and type(config.num_train_probes) is int
    assert config.methods == ("norm_grad_selective", "linear_approx") and config.every_n_train_steps == 50
    assert ns["message"].startswith("Expected at most one of `every_n_epochs` and `every_n_train_steps`")


def check_dashboard(ns: dict[str, Any], ctx: SimpleNamespace) -> None:
    (workspace,) = ctx.saved_workspaces
    assert workspace.entity == "my-team" and workspace.project == "saliency-monitor-voc"
    assert workspace.sections[0].name == "Overfitting"


def check_training_setups(ns: dict[str, Any], ctx: SimpleNamespace) -> None:
    resumed = ns["resumed"]
    _fitted(resumed)
    assert resumed.current_epoch == 2 and resumed.precision == "bf16-mixed"
    assert (ctx.tmp_path / "checkpoints" / "last.ckpt").is_file()
    (monitor,) = [c for c in resumed.callbacks if type(c).__name__ == "SaliencyMonitor"]
    assert monitor.state_dict()["evaluations"] >= 3  # the first fit's history went on


def check_reproduce(ns: dict[str, Any], ctx: SimpleNamespace) -> None:
    steps = ns["result"].steps
    assert steps[0] == "original" and steps[1] == "fc"
    means = ns["result"].mean("linear_approx", "layer3")
    assert means.shape == (len(steps),) and math.isclose(float(means[0]), 1.0)


def check_architectures(ns: dict[str, Any], ctx: SimpleNamespace) -> None:
    from saliency_monitor.engine.layouts import MapLayout, declared_layout

    assert declared_layout(ns["model"].blocks[3]) == MapLayout("tokens", (14, 14), 1)
    assert declared_layout(ns["model"].stage2) == MapLayout("channels_last")


CHECKS: dict[str, Callable[[dict[str, Any], SimpleNamespace], None]] = {
    "README.md": check_readme,
    "docs/pages/index.md": check_index,
    "docs/pages/getting-started.md": check_getting_started,
    "docs/pages/methods.md": check_methods,
    "docs/pages/meta-saliency.md": check_meta_saliency,
    "docs/pages/metrics.md": check_metrics,
    "docs/pages/smoothing.md": check_smoothing,
    "docs/pages/relevance.md": check_relevance,
    "docs/pages/monitor.md": check_monitor,
    "docs/pages/dashboard.md": check_dashboard,
    "docs/pages/training-setups.md": check_training_setups,
    "docs/pages/reproducing.md": check_reproduce,
    "docs/pages/architectures.md": check_architectures,
}
PAGES_WITH_SNIPPETS = [page for page in PAGES if python_blocks(page)]


@pytest.mark.parametrize("page", PAGES_WITH_SNIPPETS, ids=page_id)
def test_snippets_run(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, wandb_env: Path) -> None:
    monkeypatch.chdir(tmp_path)
    for name, stand_in in RESNETS.items():
        monkeypatch.setattr(torchvision.models, name, stand_in)
    saved: list[Any] = []
    monkeypatch.setattr("wandb_workspaces.workspaces.Workspace.save", lambda self: saved.append(self) or self)
    torch.manual_seed(0)
    page_stand_ins = PAGE_STAND_INS.get(page_id(page), dict)()
    namespace: dict[str, Any] = {"__name__": "__snippet__", **lightning_stand_ins(), **page_stand_ins}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the stand-ins are tiny: more threads only add overhead (4-9x on 2 busy cores)
    before = set(namespace)
    try:
        run_blocks(page, namespace)
    finally:
        torch.set_num_threads(threads)
        import wandb

        if wandb.run is not None:
            wandb.finish()
    assert set(namespace) - before, f"{page_id(page)}: its Python blocks defined nothing"
    CHECKS[page_id(page)](namespace, SimpleNamespace(tmp_path=tmp_path, saved_workspaces=saved))


def test_every_page_with_python_has_a_check() -> None:
    assert sorted(set(map(page_id, PAGES_WITH_SNIPPETS)) - set(CHECKS)) == []


def test_code_blocks_are_found_with_their_lines() -> None:
    text = "\n".join([
        "# Title",                # 1
        "```python",              # 2
        "a = 1",                  # 3
        "```",                    # 4
        "- item:",                # 5
        "",                       # 6
        "  ```py",                # 7
        "  b = a + 1",            # 8
        "  ```",                  # 9
        "```bash",                # 10
        "echo '```python'",       # 11
        "```",                    # 12
        "````python",             # 13
        "```",                    # 14
        "````",                   # 15
    ])
    blocks = code_blocks(text)
    assert [(b.line, b.language, b.code) for b in blocks] == [
        (3, "python", "a = 1"), (8, "py", "b = a + 1"), (11, "bash", "echo '```python'"), (14, "python", "```"),
    ]
    with pytest.raises(ValueError, match="Unclosed code block opened at line 1"):
        code_blocks("```python\nx = 1\n")


def test_a_failing_snippet_fails_with_the_page_line(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("Text\n\n```python\nx = 1\n```\n\n```python\nassert x == 2, 'x is 1'\n```\n")
    with pytest.raises(AssertionError, match="x is 1") as error:
        run_blocks(page, {})
    assert error.traceback[-1].lineno + 1 == 8 and str(error.traceback[-1].path) == str(page)


def test_readme_is_short_and_keeps_the_two_commands() -> None:
    text = README.read_text(encoding="utf-8")
    assert len(text.encode()) < 10_000
    (setup,) = [block.code for block in code_blocks(text) if block.language == "bash"]
    commands = [line.split("#")[0].strip() for line in setup.splitlines()]
    assert commands == [".ci/venv python examples/voc_finetune.py", ".ci/venv python -m pytest"]


def test_stand_ins_have_the_real_architectures_layer_names() -> None:
    for name, stand_in in RESNETS.items():
        real = getattr(torchvision.models, name)(weights=None)
        assert [n for n, _ in stand_in().named_modules()] == [n for n, _ in real.named_modules()], name
