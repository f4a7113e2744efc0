"""Generate with a transformers causal LM under a psparse spec, with a KV cache that keeps only
what the spec's `kv = auto` retains.

    pip install 'psparse[transformers]'
    python examples/transformers_generate.py [--prompt 512] [--new 64]

The model is a small randomly initialised Llama built from a config (nothing is downloaded), so
the text is noise; what the script shows is the mechanics: registration, a left-padded batch,
the same tokens as dense attention under the spec's mask, and the cache's memory against
transformers' own cache.
"""
import argparse
import time

import torch
from transformers import AutoModelForCausalLM, LlamaConfig

import patterndsl
from patterndsl.integrations.transformers import register

SPEC = """
pattern = causal & (sink(4) | local(64))   # StreamingLLM: attention sinks and a window
kv = auto                                   # keep exactly the keys the pattern can still reach
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompt", type=int, default=512, help="prompt length of the longer prompt")
    ap.add_argument("--new", type=int, default=64, help="tokens to generate")
    args = ap.parse_args()
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=256, hidden_size=128, intermediate_size=256,
                         num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=2,
                         max_position_embeddings=args.prompt + args.new + 1, pad_token_id=0,
                         eos_token_id=None)
    psparse = register(SPEC)                       # attn_implementation="psparse"
    model = AutoModelForCausalLM.from_config(config, attn_implementation="psparse").eval()

    lengths = [args.prompt, args.prompt // 2]      # a left-padded batch of two prompts
    ids = torch.randint(3, 256, (2, args.prompt))
    mask = torch.ones_like(ids)
    mask[1, : args.prompt - lengths[1]] = 0
    ids[1, : args.prompt - lengths[1]] = 0

    cache = psparse.cache()
    t0 = time.perf_counter()
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=args.new,
                         do_sample=False, cache=cache)
    took = time.perf_counter() - t0
    print(f"spec: {patterndsl.parse(SPEC).canonical()}")
    print(f"generated {args.new} tokens for 2 prompts ({lengths[0]} and {lengths[1]} tokens) in "
          f"{took:.2f} s")
    print("first new tokens:", out[:, args.prompt: args.prompt + 12].tolist())

    kv, layer = cache.kv(0)
    print(f"psparse cache: {cache.held(0)} keys per KV head in layer 0 (bound {kv.capacity}, "
          f"lengths {kv.lengths(layer).tolist()}), {cache.nbytes() / 1024:.1f} KiB in all")
    # transformers' own cache keeps every position of every layer: keys and values of
    # [batch, kv_heads, n, head_dim] in float32.
    head_dim = config.hidden_size // config.num_attention_heads
    full = (config.num_hidden_layers * 2 * config.num_key_value_heads * head_dim * 2 * 4
            * (args.prompt + args.new - 1))
    print(f"a full cache at the same length: {full / 1024:.1f} KiB")

if __name__ == "__main__":
    main()
