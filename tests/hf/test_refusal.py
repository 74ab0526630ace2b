"""Models ponder.hf cannot run are refused with one ConfigError line (GPT-2, sliding-window
attention), in the library and through ``generate(custom_generate=…)``; ``ponder.hf`` and the
CLI import without transformers, and then say in one line how to install it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ponder.errors import ConfigError

SRC = Path(__file__).resolve().parents[2] / "src"


def _gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=50, n_positions=64)).eval()


def test_gpt2_is_refused_with_one_line():
    pytest.importorskip("transformers")
    import torch

    from ponder.hf.calm import calm_custom_generate
    from ponder.hf.selfspec import self_speculative_custom_generate
    from ponder.hf.stack import LayerStack

    model = _gpt2()
    with pytest.raises(ConfigError) as e:
        LayerStack(model)
    msg = str(e.value)
    assert "\n" not in msg and "GPT2LMHeadModel" in msg and "model.model.layers" in msg
    ids = torch.tensor([[1, 2, 3]])
    for fn in (calm_custom_generate, self_speculative_custom_generate):
        with pytest.raises(ConfigError, match="GPT2LMHeadModel"):
            model.generate(ids, max_new_tokens=4, do_sample=False, custom_generate=fn)


def test_sliding_window_attention_is_refused():
    pytest.importorskip("transformers")
    from transformers import MistralConfig, MistralForCausalLM

    from ponder.hf.stack import LayerStack

    model = MistralForCausalLM(MistralConfig(vocab_size=30, hidden_size=16, intermediate_size=32,
                                             num_hidden_layers=2, num_attention_heads=2,
                                             num_key_value_heads=1, sliding_window=8))
    with pytest.raises(ConfigError, match="full-attention layers only"):
        LayerStack(model)


def test_importable_without_transformers():
    code = (
        "import sys; sys.modules['transformers'] = None\n"
        "import ponder.hf, ponder.hf.cli, ponder.cli\n"
        "ponder.cli.build_parser()\n"
        "print(ponder.cli.main(['hf-train', '--task', 'copy', '--steps', '1', '--out', '/nonexistent/x']))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "2"
    assert r.stderr.strip().splitlines() == [
        "ponder: error: ponder.hf needs transformers: pip install 'ponder[hf]'"]
