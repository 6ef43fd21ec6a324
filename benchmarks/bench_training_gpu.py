"""
Stage-2 training step of a 1.3B-sized ChartWiz on one GPU, random weights in bf16: samples/s, tokens/s, peak memory
and model FLOPs utilization (MFU), for sdpa and flash_attention_2, with and without gradient checkpointing.

The model is sized like the 1.3B recipe's (a DePlot-base encoder: 768 wide, 12 layers; Synatra-42dot-1.3B: a Llama
2048 wide, 24 layers, 50K vocabulary) and trained as stage 2 is: vision encoder frozen, projector and language model
trained by AdamW, loss through TRL's fused LM head on the answer tokens only. Batches are synthetic: each row holds
512 image tokens inside a prompt and an answer, right-padded, lengths within 10% of each other as length grouping
makes them.

    python benchmarks/bench_training_gpu.py                                # H100 / A100: both attentions
    python benchmarks/bench_training_gpu.py --batch-size 8 --seq-len 1536
    python benchmarks/bench_training_gpu.py --smoke                        # CPU, tiny sizes: checks the code path

MFU counts model FLOPs (PaLM's convention): 6 x trainable-path parameters x tokens for the language model and the
projector, 2 x parameters x patches for the frozen encoder's forward, plus 12 x layers x width x sequence per token
for attention; recomputation under gradient checkpointing is not counted. Peak bf16 dense FLOP/s come from the GPU's
name (H100/H200 989 TFLOP/s, A100 312) or --peak-tflops.
"""

import argparse
import json
import time

import torch
from models import llama_1b3_config
from transformers import LlamaConfig, Pix2StructVisionConfig

from chartwiz_hf import ChartWizConfig, ChartWizForConditionalGeneration


PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 70.0, "L4": 121.0}
IMAGE_TOKEN_ID = 3
PROMPT_TOKENS = 48  # system line and instruction around the image


def chartwiz_config(smoke: bool, max_patches: int) -> ChartWizConfig:
    if smoke:
        vision = Pix2StructVisionConfig(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=2, d_kv=16, d_ff=64, patch_embed_hidden_size=768
        )
        text = LlamaConfig(
            vocab_size=600, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4
        )
    else:
        # DePlot / Pix2Struct-base encoder
        vision = Pix2StructVisionConfig(
            hidden_size=768,
            num_hidden_layers=12,
            num_attention_heads=12,
            d_kv=64,
            d_ff=2048,
            patch_embed_hidden_size=768,
            seq_len=4096,
        )
        text = llama_1b3_config()
    return ChartWizConfig(vision, text, image_token_id=IMAGE_TOKEN_ID, max_patches=max_patches)


def synthetic_batch(config: ChartWizConfig, batch_size: int, seq_len: int, device, generator) -> dict:
    """Right-padded rows of 90-100% of `seq_len`: a prompt holding the image tokens, then the answer (the loss)."""
    patches = config.max_patches
    lengths = torch.randint(int(seq_len * 0.9), seq_len + 1, (batch_size,), generator=generator)
    longest = int(lengths.max())
    vocab = config.text_config.vocab_size
    input_ids = torch.randint(IMAGE_TOKEN_ID + 1, vocab, (batch_size, longest), generator=generator)
    attention_mask = (torch.arange(longest)[None, :] < lengths[:, None]).long()
    start = PROMPT_TOKENS // 2
    input_ids[:, start : start + patches] = IMAGE_TOKEN_ID
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    labels[:, : PROMPT_TOKENS + patches] = -100
    # [images, patches, 2 + 16 * 16 * 3]: row and column ids (a 16-column grid), then the patch pixels
    pixel_values = torch.randn(batch_size, patches, 2 + 16 * 16 * 3, generator=generator)
    pixel_values[..., 0] = torch.arange(patches) // 16 + 1
    pixel_values[..., 1] = torch.arange(patches) % 16 + 1
    batch = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": labels,
        "pixel_values": pixel_values,
        "pixel_attention_mask": torch.ones(batch_size, patches),
    }
    return {key: value.to(device) for key, value in batch.items()}


def model_flops(model, batch: dict) -> float:
    """Model FLOPs of one training step (see the module docstring)."""
    config = model.config
    text = config.text_config
    tokens = int(batch["attention_mask"].sum())
    images, patches = batch["pixel_values"].shape[:2]
    vision = sum(p.numel() for p in model.model.vision_tower.parameters())
    projector = sum(p.numel() for p in model.model.multi_modal_projector.parameters())
    embeddings = model.get_input_embeddings().weight.numel()
    language = (
        sum(p.numel() for p in model.model.language_model.parameters()) - embeddings + model.lm_head.weight.numel()
    )
    seq_len = batch["input_ids"].shape[1]
    attention = 12 * text.num_hidden_layers * text.hidden_size * seq_len
    return 2 * vision * images * patches + 6 * projector * images * patches + (6 * language + attention) * tokens


def peak_tflops(device, override):
    if override is not None:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((value for key, value in PEAK_BF16_TFLOPS.items() if key in name), None)


def run(args, attention: str, checkpointing: bool, device) -> dict:
    from trl.trainer.utils import add_fused_lm_head

    dtype = torch.float32 if args.smoke else torch.bfloat16
    config = chartwiz_config(args.smoke, args.max_patches)
    torch.manual_seed(0)
    with torch.device(device):
        model = ChartWizForConditionalGeneration._from_config(config, attn_implementation=attention, dtype=dtype)
    model.train()
    model.model.vision_tower.requires_grad_(False)  # stage 2
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    # The loss TRL's SFTTrainer computes: log-probabilities of the labels in chunks, no full logits
    add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=2e-5, fused=device.type == "cuda")
    generator = torch.Generator().manual_seed(0)
    batches = [
        synthetic_batch(config, args.batch_size, args.seq_len, device, generator)
        for _ in range(args.warmup + args.steps)
    ]

    def step(batch):
        outputs = model(**batch, fused_lm_head=True, use_cache=False)
        loss = -outputs.log_probs.sum() / outputs.label_mask.sum()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    synchronize = torch.cuda.synchronize if device.type == "cuda" else lambda: None
    for batch in batches[: args.warmup]:
        step(batch)
    synchronize()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for batch in batches[args.warmup :]:
        step(batch)
    synchronize()
    seconds = time.perf_counter() - start
    timed = batches[args.warmup :]
    tokens = sum(int(batch["attention_mask"].sum()) for batch in timed)
    flops = sum(model_flops(model, batch) for batch in timed)
    peak = peak_tflops(device, args.peak_tflops)
    result = {
        "attention": attention,
        "gradient_checkpointing": checkpointing,
        "samples_per_s": len(timed) * args.batch_size / seconds,
        "tokens_per_s": tokens / seconds,
        "achieved_tflops": flops / seconds / 1e12,
        "mfu": flops / seconds / (peak * 1e12) if peak else None,
        "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
    }
    return result


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch-size", type=int, default=16, help="per device, as the 1.3B recipe")
    parser.add_argument("--seq-len", type=int, default=1024, help="longest row of a batch, image tokens included")
    parser.add_argument("--max-patches", type=int, default=512, help="image tokens per chart")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--attention", nargs="+", default=["sdpa", "flash_attention_2"])
    parser.add_argument("--checkpointing", nargs="+", default=["on", "off"], choices=["on", "off"])
    parser.add_argument("--peak-tflops", type=float, default=None, help="the GPU's peak bf16 dense TFLOP/s")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on CPU in float32, to check the script")
    args = parser.parse_args()
    if args.smoke:
        args.batch_size, args.seq_len, args.max_patches, args.steps, args.warmup = 2, 128, 16, 2, 1
        args.attention = [name for name in args.attention if name != "flash_attention_2"]
    device = torch.device("cpu" if args.smoke else "cuda")
    results = []
    for attention in args.attention:
        for checkpointing in args.checkpointing:
            try:
                results.append(run(args, attention, checkpointing == "on", device))
            except (ImportError, ValueError) as error:  # flash-attn not installed, or not for this GPU
                results.append({"attention": attention, "gradient_checkpointing": checkpointing, "error": str(error)})
            if device.type == "cuda":
                torch.cuda.empty_cache()  # the last run's model and optimizer are gone; give their memory back
            print(json.dumps(results[-1]), flush=True)
    header = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"}
    header.update(batch_size=args.batch_size, seq_len=args.seq_len, image_tokens=args.max_patches)
    print(json.dumps({**header, "torch": torch.__version__, "results": results}, indent=2))


if __name__ == "__main__":
    main()
