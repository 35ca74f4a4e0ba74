"""Which label a request steers toward, and how hard, checked before anything is drawn: the scale and the rule,
a label the run (classifier-free guidance) or its noisy classifier (classifier guidance) knows, and what a guided
sampling adds to its result's ``info``.

The functions read the method's labels and classifier (``num_labels``, ``label_names``, ``classifier_rule``,
``classifier``, ``name``); :class:`~textdiffusion.methods.base.TextMethod` calls them under its own names.
"""

from __future__ import annotations

from typing import Any

from textdiffusion.catalogue import GUIDANCE_RULES
from textdiffusion.config import GUIDANCE, ConfigError
from textdiffusion.data.speakers import label_index


def check_scale(req: Any) -> float:
    """A request's guidance scale and rule, checked (guidance needs a label)."""
    if req.rule not in ("", *GUIDANCE_RULES):
        raise ConfigError(f"unknown guidance rule {req.rule!r}; choose one of {', '.join(GUIDANCE_RULES)}")
    w = req.guidance
    if not GUIDANCE.allows(w):
        raise ConfigError(f"guidance must be {GUIDANCE.describe()}, got {w}")
    if not req.label and (w != 1.0 or req.rule):
        raise ConfigError("guidance steers toward a label; give --label NAME with --guidance or --guidance-rule "
                          "(or leave them out)")
    return w


def free_label(method: Any, req: Any) -> tuple[int | None, float]:
    """The label index and scale of a request's *classifier-free* guidance, checked: a label needs a labelled run
    and one of its names; guidance needs a label. A request steered by a classifier (``rule=classifier``) asks the
    network for nothing conditional: (None, 0.0), after :func:`classifier_label`'s checks."""
    if req.rule == "classifier":
        classifier_label(method, req)  # checks the scale and the rule too
        return None, 0.0
    w = check_scale(req)
    if not req.label:
        return None, w
    if not method.num_labels:
        how = (" or steer it with a speaker classifier instead: --guidance-rule classifier"
               if method.classifier_rule else "")
        raise ConfigError(f"this {method.name} run was trained without labels, so --label {req.label!r} has nothing "
                          f"to steer; train with --set data.labels=speaker{how}")
    names = method.label_names or tuple(str(i) for i in range(method.num_labels))
    i = label_index(names, req.label)
    if i is not None:
        return i, w
    raise ConfigError(f"label {req.label!r} is not one of this run's {len(names)} labels; choose one of "
                      f"{', '.join(names)}")


def classifier_label(method: Any, req: Any) -> tuple[int, float] | None:
    """The label index and scale of a request steered by the run's noisy classifier, checked; None for any other
    request, and for scale 0, which is the unconditional sampler exactly (the classifier is not run)."""
    if req.rule != "classifier":
        return None
    w = check_classifier_request(method, req)
    if method.classifier is None:
        raise ConfigError("classifier guidance needs the run's speaker classifier; sample through "
                          "textdiffusion.load(...) or the CLI, which train it on first use")
    names = method.classifier.names
    i = label_index(names, req.label)
    if i is None:
        raise ConfigError(f"label {req.label!r} is not one of the speaker classifier's {len(names)} speakers; "
                          f"choose one of {', '.join(names)}")
    return (i, w) if w > 0 else None


def check_classifier_request(method: Any, req: Any) -> float:
    """What can be checked of a request before its classifier exists (so none is trained for a request that would
    fail anyway): the scale, and for rule=classifier a method with a rule and a label."""
    w = check_scale(req)
    if req.rule == "classifier":
        if not method.classifier_rule:
            raise ConfigError(f"the {method.name} method has no classifier-guidance rule; use --guidance-rule free "
                              f"on a run trained with --set data.labels=speaker")
        if not req.label:
            raise ConfigError("--guidance-rule classifier steers toward a speaker; give --label NAME")
    return w


def label_info(method: Any, label: int | None, w: float) -> dict[str, Any]:
    """What a classifier-free-guided sampling adds to its result's ``info``: the label's name and the scale
    (nothing for an unlabelled one)."""
    if label is None:
        return {}
    return {"label": method.label_names[label] if method.label_names else label, "guidance": w}


def classifier_info(method: Any, req: Any) -> dict[str, Any]:
    """What a classifier-guided sampling adds to its result's ``info`` (nothing for any other)."""
    if req.rule != "classifier":
        return {}
    return {"label": req.label, "guidance": req.guidance, "rule": f"classifier ({method.classifier_rule})"}
