"""Run in a subprocess by test_kernels_interpret.py: import a generated module where
``patterndsl`` cannot be imported, evaluate its masks and plans and run its attention (on
CPU: Triton's interpreter), and save the results for the parent to check.

argv: module path, output path, JSON list of mask cases, JSON attention case."""
import importlib.util
import json
import os
import sys

# The checkout (and its editable-install path entry) leaves sys.path, but the environment's
# site-packages stay even when the environment lives inside the checkout (CI's .venv).
_REPO = os.path.realpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.modules["patterndsl"] = None  # any `import patterndsl` now raises ImportError
sys.path[:] = [p for p in sys.path if p and os.path.realpath(p) not in (_REPO, os.path.join(_REPO, "tests"))]

import torch  # noqa: E402

path, out_path, mask_cases, att = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4])
spec = importlib.util.spec_from_file_location("generated_module", path)
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)

results = {"spec": mod.SPEC, "masks": [], "plans": []}
for case in mask_cases:
    doc = torch.tensor(case["doc"]) if case.get("doc") is not None else None
    results["masks"].append(mod.mask(case["n"], nq=case.get("nq"), head=case.get("head", 0),
                                     layer=case.get("layer", 0), doc_ids=doc))
    results["plans"].append(mod.plan(case["n"], nq=case.get("nq"), head=case.get("head", 0),
                                     layer=case.get("layer", 0), doc_ids=doc, block_m=16, block_n=16))
if att:
    g = torch.Generator().manual_seed(att["seed"])
    B, Hq, Hkv, n, nq, D = att["B"], att["Hq"], att["Hkv"], att["n"], att["nq"], att["D"]
    q = torch.randn(B, Hq, nq, D, generator=g, requires_grad=True)
    k = torch.randn(B, Hkv, n, D, generator=g, requires_grad=True)
    v = torch.randn(B, Hkv, n, D, generator=g, requires_grad=True)
    dout = torch.randn(B, Hq, nq, D, generator=g)
    doc = torch.tensor(att["doc"]) if att.get("doc") is not None else None
    out, lse = mod.attention(q, k, v, doc_ids=doc, return_lse=True, layer=att.get("layer", 0))
    out.backward(dout)
    results["attention"] = dict(q=q.detach(), k=k.detach(), v=v.detach(), dout=dout, out=out.detach(),
                                lse=lse.detach(), dq=q.grad, dk=k.grad, dv=v.grad)
torch.save(results, out_path)
print("ok")
