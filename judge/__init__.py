"""DomainEval: a GenEval-style judge for the procedural domain, independent of the reward.

GenEval judges a text-to-image model by running an object detector on its images and checking every
object the prompt names (present, colour, position, count). Our domain has exact ground truth, so it
gets its own GenEval: a small CNN (its own architecture and weights, *not* the reward's CLIP, never
trained on generated images) trained only on ``domain.render`` images with their scene annotations
(``scripts/train_judge.py``). For every cell of the 3x3 position grid it predicts "empty" or an
object with its shape, colour, texture and size, and for the image the background kind and colour.

Checks a prompt makes (the prompt parsed with ``domain.parse_caption``; a prompt outside the grammar
is a ValueError naming the first bad word):

    for each object the prompt names, in its grid cell:
        position   an object is present in that cell
        shape      present and of the named shape        (an absent object fails all five checks)
        colour     present and of the named colour
        texture    present and of the named texture
        size       present and of the named size
    background     the background kind is the named one  (two checks, both under "background")
                   the background colour is the named one

so a prompt with n objects makes ``5 n + 2`` checks. Per image:

- ``attribute_accuracy`` = checks that hold / all checks (GenEval's per-attribute correctness);
- ``scene_accuracy`` = 1.0 iff every check holds *and* no object is seen in a cell the prompt leaves
  empty (GenEval's "image is correct": right objects, right attributes, nothing extra), else 0.0;
- ``per_attribute[a]`` = fraction of attribute ``a``'s checks that hold.

Over a set of images the command reports the mean of the per-image attribute and scene accuracies, and
per attribute the pooled fraction of that attribute's checks over all images. Confidence intervals
are clustered by prompt: the seeds of a prompt are averaged first, then a t-interval over prompts.

    python -m judge --json domaineval.json              # 100 test prompts x seeds 0 1 2
    python -m judge --json j.json --num-prompts 20 --seeds 0 --num-renders 500

Modules: ``heads`` (what the judge reads: cells, class names, attributes), ``checks`` (the scoring
rules), ``model`` (the network and the loaded judge), ``training`` (labels and loss for
scripts/train_judge.py), ``domaineval`` (the run and its report), ``cli`` (the command).
"""

from judge.checks import JudgeScore, attribute_checks, pooled_per_attribute, score_scene
from judge.domaineval import (BLUR_CHECK_SIGMAS, HELDOUT_PROMPT_SEED, HELDOUT_RENDER_SEED, clip_retrieval_hits,
                              run_domaineval, skip_after_middle_ratios)
from judge.heads import ATTRIBUTES, BACKGROUND_HEADS, CELLS, OBJECT_HEADS
from judge.model import JUDGE_WEIGHTS, DomainJudge, JudgeConfig, JudgeNet, images_to_input
from judge.training import judge_loss, scene_targets

__all__ = ["ATTRIBUTES", "BACKGROUND_HEADS", "BLUR_CHECK_SIGMAS", "CELLS", "HELDOUT_PROMPT_SEED", "HELDOUT_RENDER_SEED",
           "JUDGE_WEIGHTS", "OBJECT_HEADS", "DomainJudge", "JudgeConfig", "JudgeNet", "JudgeScore", "attribute_checks",
           "clip_retrieval_hits", "images_to_input", "judge_loss", "pooled_per_attribute", "run_domaineval",
           "scene_targets", "score_scene", "skip_after_middle_ratios"]
