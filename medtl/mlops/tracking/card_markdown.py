"""A model card's JSON content rendered as Markdown (pure: dict in, text out), and its short summary."""

from __future__ import annotations

from typing import Any

from medtl.training import schema as S


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None or value == "":
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _interval(entry: dict[str, Any]) -> str:
    if entry.get("low") is None:
        mean = "" if entry.get("mean") is None else f"{_fmt(entry['mean'])}, "
        return f"{mean}interval unavailable ({entry.get('reason', 'no seeds')})"
    return f"{_fmt(entry['mean'])} [{_fmt(entry['low'])}, {_fmt(entry['high'])}] (n={entry['n']})"


def _rows(pairs: list[tuple[str, Any]]) -> list[str]:
    return ["| | |", "|---|---|", *[f"| {k} | {_fmt(v)} |" for k, v in pairs]]


def render(card: dict[str, Any]) -> str:
    """The card as Markdown: identity table, then one section per concern."""
    m, task, arch, init = card["model"], card["task"], card["architecture"], card["initialisation"]
    data, proto, train = card["data"], card["protocol"], card["training"]
    source = init.get("pretrained_version") or init.get("source") or "none"
    sizes = ", ".join(f"{k} {v}" for k, v in data.get("split_sizes", {}).items()) or "—"
    lines = [
        f"# {m['name']} — version {m['version']}",
        "",
        f"*Model card (medtl {card['software'].get('medtl_card_writer')}, {card['generated']}); "
        "the same content as JSON: `model_card.json` beside this file.*",
        "",
        *_rows([
            ("task", f"{task['name']} ({task['type']}: {task.get('description', '')})"),
            ("classes", ", ".join(task.get("classes") or []) or None),
            ("architecture", f"{arch['name']} ({_fmt(arch.get('parameters'))} parameters, "
                             f"{_fmt(arch.get('image_size'))} px input)"),
            ("initialisation", f"{init['arm']} (init {init['init']}; weights from {source})"),
            ("study", m.get("study")),
            ("run", m["run_id"]),
            ("protocol fingerprint", proto["fingerprint"]),
            ("learning rate, seed", f"{_fmt(proto['lr'])}, {proto['seed']}"),
            ("optimizer", f"{proto.get('optimizer')} (weight decay {_fmt(proto.get('weight_decay'))}), "
                          f"normalisation {proto.get('normalization')}"),
            ("data", f"{data['dataset']}; digest {data.get('digest')}; training fraction "
                     f"{_fmt(data.get('training_fraction'))}"),
            ("split sizes", sizes),
            ("registered", m.get("registered")),
        ]),
        "",
        "## De-identification",
        "",
        *[f"- {k.replace('_', ' ')}: {', '.join(v) if isinstance(v, list) else _fmt(v)}"
          for k, v in card["deidentification"].items()],
        "",
        "## Training budget and emissions",
        "",
        *_rows([(k.replace("_", " "), v) for k, v in train.items()]),
        "",
        "## Metrics",
        "",
        *_metrics(card["metrics"]),
        "",
        "## Calibration",
        "",
        *[f"- {k}: {_fmt(v)}" for k, v in card["calibration"].items()],
        "",
        "## The study's verdict",
        "",
        card["verdict"]["text"],
        "",
        "## Intended use and limitations",
        "",
        card["intended_use"].rstrip(),
        "",
        "## Software and environment",
        "",
        *_rows(list(card["software"].items())),
        "",
    ]
    return "\n".join(lines)


def _metrics(metrics: dict[str, Any]) -> list[str]:
    out = ["| metric | this version |", "|---|---|"]
    out += [f"| {k} | {_fmt(v)} |" for k, v in {**metrics["validation"], **metrics["test"]}.items()]
    intervals = metrics.get("intervals", {})
    if "by_arm" not in intervals:
        return [*out, "", f"Intervals: {intervals.get('status', 'unavailable')}."]
    arms = S.arm_order(intervals["by_arm"])
    names = sorted({m for arm in arms for m, iv in intervals["by_arm"][arm].items() if iv.get("n")})
    if not names:
        return [*out, "", "Intervals: no arm of the study has a finite test metric yet."]
    lrs = intervals.get("lrs", {})
    header = " | ".join(f"{a} (lr {_fmt(lrs.get(a))})" + (" — this arm" if a == intervals.get("this_arm") else "")
                        for a in arms)
    out += ["", f"The study's arms, mean over seeds [95 % interval]: {intervals['method']}.", "",
            f"| metric | {header} |", "|---|" + "---|" * len(arms)]
    out += [f"| {n} | " + " | ".join(_interval(intervals["by_arm"][a].get(n, {})) for a in arms) + " |" for n in names]
    return out


def summary(card: dict[str, Any], where: str) -> str:
    """A short description (for a card too long for MLflow's description field) pointing at the artifact."""
    m, task = card["model"], card["task"]
    test = ", ".join(f"{k} {_fmt(v)}" for k, v in card["metrics"]["test"].items())
    return (f"{m['name']} version {m['version']}: {task['name']} with {card['architecture']['name']} "
            f"({card['initialisation']['arm']} initialisation), fingerprint {card['protocol']['fingerprint']}. "
            f"Test: {test}. Verdict: {card['verdict']['text']} Full model card: {where}")
