"""Large models: federated DP fine-tuning of local Hugging Face transformers with LoRA adapters.

Importing this package sets ``HF_HUB_OFFLINE=1`` and ``TRANSFORMERS_OFFLINE=1`` first: models are
only ever loaded from local folders. Needs the ``llm`` extra (transformers, peft).
"""

from fedmodel.llm.offline import force_offline

force_offline()

from fedmodel.llm.adapter_file import AdapterFile, read_adapter, save_adapter  # noqa: E402
from fedmodel.llm.corpus import load_rotten_tomatoes, rotten_tomatoes_path  # noqa: E402
from fedmodel.llm.encoding import TokenizedShard, tokenize_shard  # noqa: E402
from fedmodel.llm.errors import AdapterStateError, FingerprintMismatch, ModelSourceError  # noqa: E402
from fedmodel.llm.evaluate import evaluate_causal_lm, evaluate_classification, evaluate_task  # noqa: E402
from fedmodel.llm.lora import LoraSettings, adapter_state, add_lora, load_adapter_state  # noqa: E402
from fedmodel.llm.merge import merge_adapter  # noqa: E402
from fedmodel.llm.sizes import PayloadSizes, payload_sizes  # noqa: E402
from fedmodel.llm.source import BaseModel, Task, check_fingerprint, fingerprint, load_base  # noqa: E402
from fedmodel.llm.text import TextShard, read_text_shard  # noqa: E402
from fedmodel.llm.train import LoraTrainSettings, train_lora_round  # noqa: E402

__all__ = [
    "AdapterFile", "AdapterStateError", "BaseModel", "FingerprintMismatch", "LoraSettings", "LoraTrainSettings",
    "ModelSourceError", "PayloadSizes", "Task", "TextShard", "TokenizedShard", "adapter_state", "add_lora",
    "check_fingerprint", "evaluate_causal_lm", "evaluate_classification", "evaluate_task", "fingerprint",
    "load_adapter_state", "load_base", "load_rotten_tomatoes", "merge_adapter", "payload_sizes", "read_adapter",
    "read_text_shard", "rotten_tomatoes_path", "save_adapter", "tokenize_shard", "train_lora_round",
]
