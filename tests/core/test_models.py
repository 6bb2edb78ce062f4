"""The reference model: a frozen copy for full fine-tuning, the adapter switched off under LoRA."""
import pytest
import torch
from omegaconf import OmegaConf

from lsp_exp.core.models import Reference, load_policy
from lsp_exp.tasks.arith.sft import TinyModelConfig, build_model
from lsp_exp.tasks.arith.tokenizer import build_tokenizer


def tiny_saved(tmp_path):
    tokenizer = build_tokenizer()
    model = build_model(tokenizer, TinyModelConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                                   num_attention_heads=2), seed=0)
    model.save_pretrained(tmp_path)
    return model.eval()


def model_cfg(lora: bool):
    return OmegaConf.create({"dtype": "float32", "attn_implementation": "sdpa",
                             "lora": {"enabled": lora, "r": 4, "alpha": 8, "dropout": 0.0,
                                      "target_modules": ["q_proj", "v_proj"]}})


def test_lora_reference_is_the_base_with_the_adapter_disabled(tmp_path):
    base = tiny_saved(tmp_path)
    policy = load_policy(model_cfg(lora=True), str(tmp_path))
    reference = Reference(policy)
    assert reference.uses_adapter and reference.frozen is None   # no second copy
    for name, p in policy.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.5)                   # make the adapter matter
    ids = torch.tensor([[1, 5, 16, 17, 2, 6]])
    with torch.no_grad(), reference.model() as ref:
        ref_logits = ref(input_ids=ids).logits
    with torch.no_grad():
        torch.testing.assert_close(ref_logits, base(input_ids=ids).logits)
        assert not torch.allclose(policy(input_ids=ids).logits, ref_logits)
    assert all(not p.requires_grad for n, p in policy.named_parameters() if "lora" not in n)


def test_full_finetune_reference_is_a_frozen_copy(tmp_path):
    tiny_saved(tmp_path)
    policy = load_policy(model_cfg(lora=False), str(tmp_path))
    reference = Reference(policy)
    assert not any(p.requires_grad for p in reference.frozen.parameters())
    with torch.no_grad():
        next(policy.parameters()).add_(1.0)
        ids = torch.tensor([[1, 5, 16, 17, 2, 6]])
        with reference.model() as ref:
            assert not torch.allclose(ref(input_ids=ids).logits, policy(input_ids=ids).logits)


def test_a_shared_reference_is_the_model_itself_not_a_copy(tmp_path):
    """`lsp-eval`'s LLM judge is never trained: it reads through the loaded model, no second copy."""
    from lsp_exp.core.models import load_frozen

    tiny_saved(tmp_path)
    model = load_frozen(model_cfg(lora=False), str(tmp_path))
    reference = Reference(model, shared=True)
    with reference.model() as ref:
        assert ref is model
    assert reference.frozen is model and not reference.uses_adapter
    assert not any(p.requires_grad for p in model.parameters()) and not model.training


def test_lora_targets_that_match_no_layer_are_one_line_naming_the_layers(tmp_path):
    """GPT-2 names its projections c_attn / c_proj / c_fc: the default q_proj... match nothing."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from lsp_exp.core.special_tokens import ModelSetupError

    GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=16, n_layer=1, n_head=2)).save_pretrained(tmp_path)
    cfg = OmegaConf.create({"dtype": "float32", "attn_implementation": "eager",
                            "lora": {"enabled": True, "r": 4, "alpha": 8, "dropout": 0.0,
                                     "target_modules": ["q_proj", "v_proj"]}})
    with pytest.raises(ModelSetupError) as err:
        load_policy(cfg, str(tmp_path))
    message = str(err.value)
    assert message.startswith("model.lora.target_modules=['q_proj', 'v_proj']: peft cannot adapt GPT2LMHeadModel")
    assert "c_attn" in message and "c_fc" in message and "\n" not in message


def test_an_attention_implementation_the_model_lacks_is_one_line_naming_the_key(tmp_path):
    """Gemma 2 has no SDPA path in transformers: the loader's ValueError becomes one line."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    from lsp_exp.core.special_tokens import ModelSetupError

    Gemma2ForCausalLM(Gemma2Config(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                   num_attention_heads=2, num_key_value_heads=1, head_dim=8)).save_pretrained(tmp_path)
    cfg = OmegaConf.create({"dtype": "float32", "attn_implementation": "sdpa",
                            "lora": {"enabled": False, "r": 4, "alpha": 8, "dropout": 0.0,
                                     "target_modules": ["q_proj"]}})
    with pytest.raises(ModelSetupError) as err:
        load_policy(cfg, str(tmp_path))
    message = str(err.value)
    assert message.startswith("model.attn_implementation='sdpa': Gemma2ForCausalLM does not support")
    assert message.endswith("set model.attn_implementation=eager (or another the model supports)")
    assert "\n" not in message
