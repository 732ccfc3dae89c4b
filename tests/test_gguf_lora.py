"""A student's adapter written as a GGUF LoRA file: what llama.cpp reads must equal what peft applies."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGUFReader
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoConfig, AutoModelForCausalLM
from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

from storage import open_db
from storage import training as tq
from tests.tiny import build_tiny_model
from trainer.gguf_lora import GgufExportError, write_gguf_lora

REPO = Path(__file__).resolve().parent.parent
MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
GGUF_NAMES = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
              "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer Llama with 4 query heads and 2 key/value heads (so q and k are reordered differently)."""
    return Path(build_tiny_model(tmp_path_factory.mktemp("tiny") / "model"))


def random_lora(model_dir: Path, out: Path, **lora: object) -> Path:
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=MODULES, **lora))  # type: ignore[arg-type]
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.normal_(0.0, 0.1, generator=g)
    model.save_pretrained(out)
    return out


def peft_deltas(model_dir: Path, adapter: Path) -> dict[tuple[int, str], np.ndarray]:
    """What peft adds to each base weight: merged weight minus base weight (HF layout)."""
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    merged = PeftModel.from_pretrained(base, adapter).merge_and_unload().state_dict()
    out = {}
    for key, value in merged.items():
        for module in MODULES:
            if key.endswith(f".{module}.weight"):
                out[(int(key.split(".")[2]), module)] = (value - before[key]).numpy()
    return out


def gguf_deltas(path: Path, config: dict) -> dict[tuple[int, str], np.ndarray]:
    """What llama.cpp adds: scale · B·A per tensor, turned back to HF layout the way transformers reads GGUF q/k."""
    reader = GGUFReader(path)
    alpha = float(reader.fields["adapter.lora.alpha"].parts[-1][0])
    tensors = {t.name: t for t in reader.tensors}
    unpermute = LlamaTensorProcessor(config={"num_attention_heads": config["num_attention_heads"],
                                             "num_key_value_heads": config["num_key_value_heads"]})
    out = {}
    for layer in range(config["num_hidden_layers"]):
        for module, short in GGUF_NAMES.items():
            name = f"blk.{layer}.{short}.weight"
            a, b = tensors[f"{name}.lora_a"], tensors[f"{name}.lora_b"]
            rank = int(a.shape[1])
            # llama.cpp's own checks: lora_a is [n_in, rank] and lora_b [rank, n_out] in ggml's order
            assert int(b.shape[0]) == rank
            delta = (alpha / rank) * (np.asarray(b.data, dtype=np.float32) @ np.asarray(a.data, dtype=np.float32))
            out[(layer, module)] = unpermute.process(delta, name).weights
    return out


def test_the_gguf_adapter_applies_exactly_what_peft_applies(tiny, tmp_path):
    adapter = random_lora(tiny, tmp_path / "adapter")
    config = AutoConfig.from_pretrained(tiny).to_dict()
    out = write_gguf_lora(adapter, config, tmp_path / "kid.lora.gguf", name="kid v1")

    reader = GGUFReader(out)
    meta = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    assert meta["general.architecture"] == "llama" and meta["general.type"] == "adapter"
    assert meta["adapter.type"] == "lora" and meta["general.name"] == "kid v1"
    q = next(t for t in reader.tensors if t.name == "blk.0.attn_q.weight.lora_a")
    assert list(q.shape) == [config["hidden_size"], 4]  # ggml order: [n_in, rank]

    expected, got = peft_deltas(tiny, adapter), gguf_deltas(out, config)
    assert expected.keys() == got.keys() and len(got) == 2 * len(MODULES)
    for key in expected:
        np.testing.assert_allclose(got[key], expected[key], atol=1e-6, err_msg=str(key))
    # the q/k reordering is not a no-op: read without it, the query delta would be wrong
    b = np.asarray(next(t for t in reader.tensors if t.name == "blk.0.attn_q.weight.lora_b").data)
    assert not np.allclose((8 / 4) * b @ np.asarray(q.data), expected[(0, "q_proj")], atol=1e-3)


def test_rslora_scaling_is_kept(tiny, tmp_path):
    adapter = random_lora(tiny, tmp_path / "adapter", use_rslora=True)
    config = AutoConfig.from_pretrained(tiny).to_dict()
    out = write_gguf_lora(adapter, config, tmp_path / "kid.lora.gguf", name="kid")
    expected, got = peft_deltas(tiny, adapter), gguf_deltas(out, config)
    np.testing.assert_allclose(got[(1, "down_proj")], expected[(1, "down_proj")], atol=1e-6)


@pytest.mark.parametrize(
    ("lora", "message"),
    [({"use_dora": True}, "DoRA"), ({"bias": "lora_only"}, "biases"), ({"modules_to_save": ["lm_head"]}, "whole modules")],
)
def test_adapters_llama_cpp_cannot_apply_are_refused_with_the_reason(tiny, tmp_path, lora, message):
    adapter = random_lora(tiny, tmp_path / "adapter", **lora)
    with pytest.raises(GgufExportError, match=message):
        write_gguf_lora(adapter, AutoConfig.from_pretrained(tiny).to_dict(), tmp_path / "x.gguf", name="x")
    assert not (tmp_path / "x.gguf").exists()


def test_a_base_of_another_architecture_is_refused(tiny, tmp_path):
    adapter = random_lora(tiny, tmp_path / "adapter")
    config = {**AutoConfig.from_pretrained(tiny).to_dict(), "architectures": ["GPT2LMHeadModel"]}
    with pytest.raises(GgufExportError, match="GPT2LMHeadModel; GGUF LoRA export supports LlamaForCausalLM"):
        write_gguf_lora(adapter, config, tmp_path / "x.gguf", name="x")


def classroom(cfg: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CLASSROOM_HOME", "CLASSROOM_CONFIG")}
    return subprocess.run([sys.executable, "-m", "cli.main", "--config", str(cfg), *args],
                          capture_output=True, text=True, timeout=120, cwd=REPO, env=env)


def test_the_cli_writes_the_live_adapter_and_says_how_to_serve_it(tiny, tmp_path):
    home = tmp_path / "home"
    cfg = tmp_path / "classroom.toml"
    cfg.write_text(f'home = "{home}"\n[lessons]\ndefault_teacher = "kid"\ndefault_student = "kid"\n'
                   f'[models.kid]\nbackend = "local"\npath = "{tiny}"\ntrainable = true\n'
                   '[models.api]\nbackend = "openai"\nmodel = "gpt"\nbase_url = "http://127.0.0.1:9/v1"\n')
    home.mkdir()
    missing = classroom(cfg, "gguf", "--out", str(tmp_path / "out"))
    assert missing.returncode == 2 and "kid has no live adapter" in missing.stderr

    db = open_db(home / "classroom.db")
    for version in (1, 2):
        row = tq.add_adapter(db, student="kid", path=str(random_lora(tiny, tmp_path / f"a{version}")), run_id=None,
                             parent_id=None, data_hash=None)
    tq.activate_adapter(db, row["id"])
    db.conn.close()

    done = classroom(cfg, "gguf", "--out", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    written = tmp_path / "out" / "kid-v2.lora.gguf"
    assert f"wrote {written}" in done.stdout and "(active)" in done.stdout
    assert "convert_hf_to_gguf.py" in done.stdout and f"--lora {written}" in done.stdout
    assert GGUFReader(written).fields["general.type"].contents() == "adapter"

    bad = classroom(cfg, "gguf", "--version", "7")
    assert bad.returncode == 2 and "kid has no adapter v7" in bad.stderr, bad.stderr
    assert json.loads((tmp_path / "a1" / "adapter_config.json").read_text())["r"] == 4  # the adapters are untouched
