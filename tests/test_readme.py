"""Every code block of README.md runs as written (issue 17).

Each ```python block is executed verbatim, in a fresh namespace, in a temporary working directory. A block that
uses a ``pipe`` (or ``model``, ``tokenizer``) the README leaves to the user gets a small stand-in from STAND_INS.
Each ```bash block's ``diffusers-ext`` commands run in-process through ``diffusers_ext.cli.main``; blocks of other
commands (make, pip) are skipped with the reason in SKIPPED. Slow blocks run with the few smaller numbers listed in
SMALLER (each replacement must match exactly once); CHECKS asserts what the blocks and their comments promise.
"""

import re
import shlex
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def readme_blocks(text: str) -> list[tuple[str, str, str]]:
    """(section heading, language, code) of every fenced block with a language tag, in README order."""
    blocks, heading = [], None
    for m in re.finditer(r"^#+ ([^\n]*)$|^```(\w+)\n(.*?)^```", text, re.M | re.S):
        if m.group(1) is not None:
            heading = m.group(1).strip()
        else:
            blocks.append((heading, m.group(2), m.group(3)))
    return blocks


BLOCKS = readme_blocks((ROOT / "README.md").read_text())
SWAP, DIGITS, SWEEPS = "Swap a scheduler in (one line)", "The embedded digits model", "Sweeps and FID"
DC, USF = "DC-Solver and DualFast: more from 5-10 model calls", "USF solver schedules and the S^3 search"
MASKED, QUANT = "Masked diffusion: the First-Hitting Sampler", "Low-bit FP quantization (FP8 / FP4)"
TUNE = "Tune: the best scheduler for your model at your NFE"

SKIPPED = {
    "diffusers-ext": "`make demo` / `make test` run the whole demo and suite (minutes); .ci/run runs `make test`",
    "Install": "pip installs (network, minutes); `make test` installs the checkout the same way, with [dev]",
}

# The only departures from the README text: smaller numbers for blocks that take minutes as written.
SMALLER = {
    SWEEPS: [("--nfe 5,10,20 --guidance 1,3 --seeds 0,1,2", "--nfe 5 --guidance 1,3 --seeds 0 --samples 8"),
             ('third_order_taylor=true" --nfe 5,10', 'third_order_taylor=true" --nfe 5,10 --samples 8')],
    DC: [("calibrate_dc(pipe, 5, guidance_scale=5.0)",
          "calibrate_dc(pipe, 5, guidance_scale=5.0, num_samples=2, reference_steps=20, iterations=2)")],
    QUANT: [("num_inference_steps=10)", "num_inference_steps=2, iterations=5, progress=False)"),
            ('pipe("a cat")', 'pipe("a cat", num_inference_steps=2)')],
    TUNE: [("tune(pipe, nfe=5, guidance_scale=2.0)", "tune(pipe, nfe=5, guidance_scale=2.0, num_calibration=2, "
            "num_validation=2, reference_steps=20, refine=False, progress=False)")],
}


def _tiny_ddpm_pipeline():
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
                       norm_num_groups=4, down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"))
    return DDPMPipeline(unet=unet, scheduler=DDPMScheduler())


def _digits_pipeline():
    from diffusers_ext.models.digits import load_pipeline

    return load_pipeline()


class _UniformLM(torch.nn.Module):
    """LLaDA2Pipeline's model interface (input_ids, attention_mask, position_ids) -> .logits, all tokens equally
    likely except the mask token; counts its calls."""

    def __init__(self, vocab_size: int, mask_token_id: int):
        super().__init__()
        self.vocab_size, self.mask_token_id, self.calls = vocab_size, mask_token_id, 0
        self.device = torch.device("cpu")

    def forward(self, input_ids, attention_mask=None, position_ids=None):
        self.calls += 1
        logits = torch.zeros(*input_ids.shape, self.vocab_size)
        logits[..., self.mask_token_id] = -torch.inf
        return SimpleNamespace(logits=logits)


def _llada_stand_ins():
    from tests.test_masked_diffusion import _local_tokenizer

    tokenizer = _local_tokenizer()
    return {"model": _UniformLM(len(tokenizer), tokenizer.mask_token_id), "tokenizer": tokenizer}


_FOLDERS = []  # the stand-ins' saved pipelines (TemporaryDirectory: removed when the test process exits)


def _tiny_sd_pipeline():
    """A Stable Diffusion pipeline of tiny random components (8x8 latents), as diffusers' fast tests build one."""
    import tempfile

    from diffusers import DDPMScheduler

    from tests.helpers import tiny_stable_diffusion

    source = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1)
    folder = tempfile.TemporaryDirectory()
    _FOLDERS.append(folder)
    return tiny_stable_diffusion(Path(folder.name), source)


STAND_INS = {SWAP: lambda: {"pipe": _tiny_ddpm_pipeline()}, DC: lambda: {"pipe": _digits_pipeline()},
             USF: lambda: {"pipe": _digits_pipeline()}, MASKED: _llada_stand_ins,
             QUANT: lambda: {"pipe": _tiny_sd_pipeline()}}


def _check_swap(ns, _):
    from diffusers_ext import DEISScheduler

    pipe = ns["pipe"]
    assert type(pipe.scheduler) is DEISScheduler and pipe.scheduler.config.solver_type == "tab"
    images = pipe(batch_size=1, num_inference_steps=3, output_type="np").images
    assert images.shape == (1, 8, 8, 3) and ((images >= 0) & (images <= 1)).all()


def _check_digits(ns, _):
    assert len(ns["images"]) == 3 and all(im.size == (8, 8) for im in ns["images"])


def _check_sweeps(_, cwd):
    import json

    digits = [json.loads(line) for line in (cwd / "results" / "sweep.jsonl").read_text().splitlines()]
    gmm = [json.loads(line) for line in (cwd / "results" / "sweep_gmm.jsonl").read_text().splitlines()]
    assert len(digits) == 4 * 2 and len(gmm) == 2 * 2  # schedulers x guidance (x NFE 5) / schedulers x NFE


def _check_dc(ns, _):
    from diffusers_ext import DPMSolverPPScheduler

    assert len(ns["cal"].ratios) == 5
    assert type(ns["pipe"].scheduler) is DPMSolverPPScheduler and ns["pipe"].scheduler.config.dualfast_strength == 0.5


def _check_usf(ns, _):
    from diffusers_ext import USFScheduler

    assert type(ns["pipe"].scheduler) is USFScheduler and len(ns["pipe"].scheduler.timesteps) == 5


def _check_masked(ns, _):
    assert ns["out"].sequences.shape == (4, 128) and ns["out"].num_model_calls == 128  # as the comment says
    assert ns["model"].calls > 0


def _check_quant(ns, cwd):
    from diffusers_ext import DPMSolverPPScheduler
    from diffusers_ext.quant import QuantizedLayer

    assert (cwd / "sd-w4a8" / "model_index.json").is_file() and ns["report"]["relative_mse"] > 0
    pipe = ns["pipe"]  # the reloaded folder: packed layers, our scheduler kept
    assert isinstance(pipe.scheduler, DPMSolverPPScheduler)
    assert any(isinstance(m, QuantizedLayer) for m in pipe.unet.modules())
    images = pipe("a cat", num_inference_steps=2, output_type="np").images
    assert images.shape[0] == 1 and torch.isfinite(torch.as_tensor(images)).all()


def _check_tune(ns, _):
    result = ns["result"]
    assert ns["pipe"].scheduler is result.scheduler and len(result.report) == 66  # the whole catalogue
    assert result.baseline.name == "model's own (DDPMScheduler)" and result.chosen in result.table()


CHECKS = {SWAP: _check_swap, DIGITS: _check_digits, SWEEPS: _check_sweeps, DC: _check_dc, USF: _check_usf,
          MASKED: _check_masked, QUANT: _check_quant, TUNE: _check_tune}


@pytest.fixture(autouse=True)
def one_thread():
    """The blocks' models are tiny: one thread is as fast, and far faster on a machine shared with other jobs
    (two threads each spin-wait for the other: 30x slower at load 5 on 2 cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def smaller(heading: str, code: str) -> str:
    for old, new in SMALLER.get(heading, []):
        assert code.count(old) == 1, f"README block under {heading!r}: {old!r} must occur exactly once"
        code = code.replace(old, new)
    return code


def commands(code: str) -> list[list[str]]:
    """The commands of a bash block (continuation lines joined, comments dropped)."""
    return [argv for line in code.replace("\\\n", " ").splitlines() if (argv := shlex.split(line, comments=True))]


def test_every_block_is_handled_and_every_table_entry_names_a_block():
    headings = [heading for heading, _, _ in BLOCKS]
    assert len(headings) == len(set(headings)) == 10  # one block per section: update the tables with the README
    assert set(SKIPPED) | set(CHECKS) == set(headings)
    assert set(SMALLER) | set(STAND_INS) <= set(CHECKS)
    assert {language for _, language, _ in BLOCKS} == {"python", "bash"}


@pytest.mark.parametrize("heading, language, code", BLOCKS, ids=[h for h, _, _ in BLOCKS])
def test_readme_block_runs(heading, language, code, tmp_path, monkeypatch):
    if heading in SKIPPED:
        pytest.skip(SKIPPED[heading])
    monkeypatch.chdir(tmp_path)
    code = smaller(heading, code)
    ns = STAND_INS.get(heading, dict)()
    if language == "python":
        exec(compile(code, f"README.md ({heading})", "exec"), ns)
    else:
        from diffusers_ext.cli import main

        for argv in commands(code):
            assert argv[0] == "diffusers-ext", f"only this package's CLI runs here, not {argv[0]!r}"
            assert main(argv[1:]) in (0, None)
    CHECKS[heading](ns, tmp_path)


def test_install_section_names_the_declared_minimums():
    """The README's "tested with" versions are pyproject's minimums (issue 17: declare what is tested), and the
    suite runs with at least them."""
    from importlib.metadata import version

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = project["dependencies"] + project["optional-dependencies"]["dev"]
    minimums = dict(m.groups() for r in requirements if (m := re.fullmatch(r"([\w-]+)>=([\d.]+)", r)))
    install = (ROOT / "README.md").read_text().split("### Install", 1)[1].split("```", 1)[0]
    named = dict(re.findall(r"(torch|diffusers|torch-fidelity|transformers) (\d[\d.]*\d)", " ".join(install.split())))
    assert named.keys() == {"torch", "diffusers", "torch-fidelity", "transformers"}
    for name, tested in named.items():
        assert minimums.get(name) == tested, f"README: tested with {name} {tested}; pyproject: {minimums.get(name)}"
        installed = tuple(int(p) for p in re.match(r"[\d.]+", version(name)).group().rstrip(".").split("."))
        assert installed >= tuple(int(p) for p in tested.split("."))
