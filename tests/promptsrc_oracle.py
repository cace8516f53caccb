"""Runs upstream PromptSRC and IVLP (../shared/upstream/promptsrc at bb95c77, on upstream Dassl) on
a tiny CLIP, in its own process: `python promptsrc_oracle.py JOB OUT` (JOB and OUT are torch files).

Replacements made so the unchanged upstream files run here, and nothing else:
- `torch.Tensor.cuda`, `torch.nn.Module.cuda` and `torch.Tensor.half` are identities (the oracle
  runs on the CPU in fp32; the config asks for PREC fp32);
- `clip.clip._download` returns the tiny CLIP's state-dict file (upstream resolves ViT-B/16 by URL);
- `trainers.promptsrc.F` records what `cross_entropy`, `l1_loss` and `kl_div` return, so each
  term of a step can be compared;
- the trainers are built without a dataset (TrainerBase.__init__, then build_model with the class
  names), and each training step is one whole epoch (num_batches 1), so GPA runs after each.
"""

from __future__ import annotations

import os
import sys
import types

job_file, out_file = sys.argv[1], sys.argv[2]
upstream = os.environ["PROMPTSRC_UPSTREAM"]
# upstream's own `trainers`, `datasets`, `clip` and `train` first; the project is not importable
sys.path[:0] = [os.path.join(upstream, "promptsrc"), upstream, os.path.join(upstream, "stubs")]

import torch  # noqa: E402
from torch import nn  # noqa: E402

torch.Tensor.cuda = lambda self, *args, **kwargs: self
nn.Module.cuda = lambda self, *args, **kwargs: self
torch.Tensor.half = lambda self, *args, **kwargs: self

job = torch.load(job_file, weights_only=False)

from clip import clip  # noqa: E402

clip._download = lambda url, root=None: job["weights"]

import trainers.independentVL as upstream_ivlp  # noqa: E402  (upstream's package, not ours)
from dassl.config import get_cfg_default  # noqa: E402
from dassl.engine.trainer import TrainerBase  # noqa: E402

import train as upstream_train  # noqa: E402
import trainers.promptsrc as upstream_promptsrc  # noqa: E402

recorded: list[tuple[str, float]] = []


class RecordingF:
    def __getattr__(self, name):
        return getattr(torch.nn.functional, name)

    def _record(self, name, *args, **kwargs):
        value = getattr(torch.nn.functional, name)(*args, **kwargs)
        recorded.append((name, value.item()))
        return value

    def cross_entropy(self, *args, **kwargs):
        return self._record("cross_entropy", *args, **kwargs)

    def l1_loss(self, *args, **kwargs):
        return self._record("l1_loss", *args, **kwargs)

    def kl_div(self, *args, **kwargs):
        return self._record("kl_div", *args, **kwargs)


upstream_promptsrc.F = RecordingF()


def build(trainer_class, config: str, opts: list[str]):
    cfg = get_cfg_default()
    upstream_train.extend_cfg(cfg)
    cfg.merge_from_file(os.path.join(upstream, "promptsrc", "configs", "trainers", config))
    cfg.merge_from_list(opts)
    trainer = trainer_class.__new__(trainer_class)
    TrainerBase.__init__(trainer)
    trainer.cfg, trainer.device = cfg, torch.device("cpu")
    trainer.dm = types.SimpleNamespace(dataset=types.SimpleNamespace(classnames=job["classnames"]))
    trainer.build_model()
    return trainer


def prompts(model: nn.Module) -> dict:
    """The model's state without the frozen CLIP (whose GPA copy upstream also re-weights)."""
    return {k: v.clone() for k, v in model.state_dict().items() if "VPT" in k or k.endswith(".ctx")}


images, labels = job["images"], job["labels"]
result = {}
torch.manual_seed(job["seed"])
src = build(upstream_promptsrc.PromptSRC, job["promptsrc_config"], job["promptsrc_opts"])
src.model.train()
result["initial"] = {k: v.clone() for k, v in src.model.state_dict().items()}
with torch.no_grad():
    out = src.model(images, labels)
names = ("ce", "text", "fixed_text", "zs_image", "image", "zs_logits", "logits")
result["forward"] = dict(zip(names, [o.detach().clone() if torch.is_tensor(o) else o for o in out]))
recorded.clear()
result["steps"] = []
for _ in range(job["steps"]):
    src.batch_idx, src.num_batches = 0, 1
    src.forward_backward({"img": images, "label": labels})
    result["steps"].append({"terms": list(recorded), "prompts": prompts(src.model)})
    recorded.clear()
src.save_model(job["steps"] - 1, os.path.join(job["out"], "promptsrc"))
src.model.eval()
with torch.no_grad():
    result["promptsrc_eval_logits"] = src.model(images)

torch.manual_seed(job["seed"])
ivlp = build(upstream_ivlp.IVLP, job["ivlp_config"], job["ivlp_opts"])
ivlp.save_model(0, os.path.join(job["out"], "ivlp"))
ivlp.model.eval()
with torch.no_grad():
    result["ivlp_eval_logits"] = ivlp.model(images)
result["templates"] = list(upstream_promptsrc.IMAGENET_TEMPLATES)
torch.save(result, out_file)
