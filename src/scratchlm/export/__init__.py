"""Checkpoints to and from other ecosystems: Hugging Face `LlamaForCausalLM` folders (and back to scratchlm runs).

    from scratchlm.export import export_hf, import_hf
    export_hf("runs/train", "exports/hf")         # then transformers.AutoModelForCausalLM.from_pretrained(...)
    import_hf("exports/hf", "runs/imported")      # a run folder: checkpoint.pt, config.json, tokenizer/
"""

from scratchlm.export.hf_llama import (
    check_llama_compatible,
    export_hf,
    from_hf_state_dict,
    import_hf,
    llama_config,
    model_config_from_llama,
    to_hf_state_dict,
    tokenizer_from_hf,
)

__all__ = [
    "check_llama_compatible", "export_hf", "from_hf_state_dict", "import_hf", "llama_config", "model_config_from_llama",
    "to_hf_state_dict", "tokenizer_from_hf",
]
