"""LoRA fine-tuning throughput: DP (Opacus hooks) against no DP, and adapter bytes against full model bytes.

Runs whole local rounds of :func:`fedmodel.llm.train_lora_round` on random token sequences, DP and
non-DP interleaved ``--repeats`` times after one warm-up each, and prints the median steps/s and
samples/s side by side with their ratio, plus what an owner sends (adapter) against the full model.
The noise calibration happens once, before timing. Uses CUDA when available (fp32), else the CPU.

    python benchmarks/llm_throughput.py [--model PATH] [--task classification] [--examples 256]
                                        [--batch 32] [--physical 32] [--seq 64] [--repeats 3]

Without ``--model`` a tiny random model (hidden 128, 2 layers, vocab 8192: BERT for classification,
GPT-2 for causal-lm) is built in a temporary folder. Nothing is read from the network.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from fedmodel.llm import (
    LoraSettings,
    LoraTrainSettings,
    TextShard,
    TokenizedShard,
    add_lora,
    load_base,
    payload_sizes,
    tokenize_shard,
    train_lora_round,
)
from fedmodel.llm.source import Task
from fedmodel.privacy import OwnerPrivacyState, plan_for_owner


def build_tiny(folder: Path, task: Task, vocab: int = 8192, hidden: int = 128) -> Path:
    """Save a random model (BERT classifier, or GPT-2 LM for causal-lm) and a word-level tokenizer to ``folder``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        GPT2Config,
        GPT2LMHeadModel,
        PreTrainedTokenizerFast,
    )

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(vocab - 5)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]")
    fast.save_pretrained(folder)
    torch.manual_seed(0)
    if task == "classification":
        BertForSequenceClassification(BertConfig(
            vocab_size=vocab, hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=4 * hidden, pad_token_id=0)).save_pretrained(folder)
    else:
        GPT2LMHeadModel(GPT2Config(
            vocab_size=vocab, n_embd=hidden, n_layer=2, n_head=2, n_positions=1024, bos_token_id=3, eos_token_id=3,
            pad_token_id=0)).save_pretrained(folder)
    return folder


def random_shard(tokenizer: object, task: Task, examples: int, seq: int, seed: int) -> TokenizedShard:
    """``examples`` texts of random vocabulary tokens, tokenised to ``seq`` tokens."""
    special = set(tokenizer.all_special_tokens)  # type: ignore[attr-defined]
    vocab = sorted(t for t in tokenizer.get_vocab() if t not in special)  # type: ignore[attr-defined]
    g = torch.Generator().manual_seed(seed)
    texts = tuple(" ".join(vocab[int(i)] for i in torch.randint(0, len(vocab), (seq,), generator=g))
                  for _ in range(examples))
    labels = (torch.arange(examples) % 2).numpy() if task == "classification" else None
    shard = TextShard("random", texts, labels, ("0", "1") if labels is not None else ())
    return tokenize_shard(tokenizer, shard, max_length=seq)  # type: ignore[arg-type]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="local Hugging Face model folder")
    parser.add_argument("--task", choices=["classification", "causal-lm"], default="classification")
    parser.add_argument("--examples", type=int, default=256)
    parser.add_argument("--batch", type=int, default=32, help="logical batch size")
    parser.add_argument("--physical", type=int, default=32, help="max physical batch size")
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rank", type=int, default=8)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with tempfile.TemporaryDirectory(prefix="fedmodel-llm-bench-") as tmp:
        path = args.model if args.model is not None else build_tiny(Path(tmp) / "tiny", args.task)
        base = load_base(path, args.task, 2 if args.task == "classification" else None)
        shard = random_shard(base.tokenizer, args.task, args.examples, args.seq, seed=0)
    model = add_lora(base.model, LoraSettings(rank=args.rank))
    settings = LoraTrainSettings(batch_size=args.batch, max_physical_batch_size=args.physical, lr=1e-3,
                                 rounds=args.repeats + 1, epsilon=8.0)
    privacy = OwnerPrivacyState(plan=plan_for_owner(
        num_examples=len(shard), batch_size=settings.batch_size, local_epochs=1, rounds=settings.rounds,
        epsilon=settings.epsilon, delta=settings.delta, max_grad_norm=settings.max_grad_norm))
    steps = privacy.plan.steps_per_round  # type: ignore[union-attr]
    seconds: dict[str, list[float]] = {"no DP": [], "DP (hooks)": []}
    for repeat in range(args.repeats + 1):  # repeat 0 warms up
        for mode, state in (("no DP", None), ("DP (hooks)", privacy)):
            if device.type == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
            train_lora_round(model, shard, settings, privacy=state, seed=repeat, device=device)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if repeat:
                seconds[mode].append(time.perf_counter() - started)
    sizes = payload_sizes(model)
    name = args.model or (f"tiny random {'BERT' if args.task == 'classification' else 'GPT-2'} "
                          "(hidden 128, 2 layers, vocab 8192)")
    print(f"model: {name}; task {args.task}; device {device} (fp32); {len(shard)} examples x {args.seq} tokens, "
          f"logical batch {args.batch}, physical {args.physical}, {steps} steps per round, "
          f"median of {args.repeats} rounds")
    print(f"{'mode':<12} {'s/round':>9} {'steps/s':>9} {'samples/s':>10} {'vs no DP':>9}")
    base_rate = steps / statistics.median(seconds["no DP"])
    for mode, values in seconds.items():
        median = statistics.median(values)
        print(f"{mode:<12} {median:>9.3f} {steps / median:>9.2f} {len(shard) / median:>10.1f} "
              f"{steps / median / base_rate:>8.2f}x")
    print(f"{'payload':<12} adapter {sizes.adapter_bytes:,} B | full model {sizes.full_model_bytes:,} B | "
          f"ratio {sizes.ratio:.4%}")


if __name__ == "__main__":
    main()
