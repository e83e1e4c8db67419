"""Generated GLUE-format files (every official layout) and a tiny BERT + tokenizer folder, for fast tests; a recipe
launched as a real command (1 process, or N CPU processes through accelerate)."""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile

import torch
import transformers as T

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES = os.path.join(ROOT, "recipes")
CPU_CONFIG = os.path.join(RECIPES, "accelerate_configs", "cpu_multi_process.yaml")
RECIPE_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT, "HF_HUB_OFFLINE": "1"}


def _command(script: str, args: list[str], nproc: int) -> list[str]:
    if nproc == 1:
        return [sys.executable, os.path.join(RECIPES, script), *args]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", CPU_CONFIG, "--num_processes",
            str(nproc), "--main_process_port", str(port), os.path.join(RECIPES, script), *args]


class Started:
    """A command started in the background; ``wait()`` fails the test with its stderr unless it exits 0."""

    def __init__(self, cmd: list[str], env: dict | None = None, cwd: str | None = None):
        self.cmd = cmd
        self._out, self._err = tempfile.TemporaryFile(), tempfile.TemporaryFile()  # no pipe to fill up
        self.proc = subprocess.Popen(cmd, env=env or RECIPE_ENV, cwd=cwd, stdout=self._out, stderr=self._err)

    def wait(self, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        out, err = (_read_and_close(f) for f in (self._out, self._err))
        assert code == 0 or not check, err[-4000:]
        return subprocess.CompletedProcess(self.cmd, code, out, err)


def _read_and_close(file) -> str:
    file.seek(0)
    text = file.read().decode(errors="replace")
    file.close()
    return text


def start(script: str, args: list[str], nproc: int = 1) -> Started:
    """``recipes/<script>`` started in the background (``accelerate launch`` with the CPU multi-process config for
    ``nproc`` > 1, on a free port). Independent runs of one test (a reference run and the runs compared with it)
    start together: each runs on one thread (OMP_NUM_THREADS=1), so on two cores they take the time of about one,
    and their numbers do not depend on it."""
    return Started(_command(script, args, nproc))


def launch(script: str, args: list[str], nproc: int = 1) -> subprocess.CompletedProcess:
    """Run ``recipes/<script>`` to the end (see ``start``); fail the test with its stderr unless it exits 0."""
    return start(script, args, nproc).wait()


def launch_together(*runs: tuple) -> list[subprocess.CompletedProcess]:
    """Several independent ``(script, args[, nproc])`` runs at once; each must exit 0."""
    started = [start(*run) for run in runs]
    return [run.wait() for run in started]


WORDS = ["good", "bad", "movie", "plot", "the", "a", "is", "was", "not", "very", "man", "dog", "runs", "eats",
         "red", "blue", "car", "house", "big", "small", "yes", "no", "cat", "sees"]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def make_model_dir(path: str, seed: int = 0, layers: int = 4, dropout: float = 0.1) -> str:
    """A tiny random BERT encoder (no head, like all-MiniLM-L6-v2) with a WordPiece tokenizer, saved to ``path``."""
    os.makedirs(path, exist_ok=True)
    vocab = os.path.join(path, "vocab.txt")
    with open(vocab, "w") as f:
        f.write("\n".join(SPECIAL + WORDS + ['"', ".", ","]) + "\n")
    T.BertTokenizer(vocab=vocab).save_pretrained(path)
    torch.manual_seed(seed)
    config = T.BertConfig(vocab_size=len(SPECIAL) + len(WORDS) + 3, hidden_size=32, num_hidden_layers=layers,
                          num_attention_heads=2, intermediate_size=64, max_position_embeddings=128,
                          hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    T.BertModel(config).save_pretrained(path)
    return path


def _sentence(rng: random.Random, marker: str | None = None) -> str:
    words = [rng.choice(WORDS[2:]) for _ in range(rng.randint(3, 9))]
    if marker:
        words.insert(rng.randrange(len(words)), marker)
    return " ".join(words) + " ."


def _rows(task: str, n: int, rng: random.Random) -> tuple[list[str] | None, list[list[str]]]:
    """Header and rows of one file in the task's official layout; the label is learnable from the words."""
    rows = []
    for i in range(n):
        y = rng.randint(0, 1)
        s1, s2 = _sentence(rng, "good" if y else "bad"), _sentence(rng)
        if task == "cola":
            rows.append(["gj04", str(y), "" if y else "*", s1])
        elif task == "sst2":
            rows.append([s1, str(y)])
        elif task == "mrpc":
            rows.append([str(y), str(1000 + i), str(2000 + i), s1, '" ' + s2])  # stray quote, as in the real files
        elif task == "stsb":
            rows.append([str(i), "main-captions", "MSRvid", "2012test", f"{i:04d}", "none", "none", s1, s2,
                         f"{(4.0 if y else 0.0) + rng.random():.3f}"])
        elif task == "qqp":
            rows.append([str(i), str(2 * i), str(2 * i + 1), s1, s2, str(y)])
        elif task == "mnli":
            label = ["entailment", "neutral", "contradiction"][y * 2 if rng.random() < 0.8 else 1]
            rows.append([str(i), str(i), f"{i}e", "fiction", "(x)", "(y)", "(X)", "(Y)", s1, s2, label, label])
        elif task in ("qnli", "rte"):
            rows.append([str(i), '"' + s1 if task == "rte" else s1, s2, ["not_entailment", "entailment"][y]])
        elif task == "wnli":
            rows.append([str(i), s1, s2, str(y)])
    headers = {
        "cola": None, "sst2": ["sentence", "label"], "mrpc": ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"],
        "stsb": ["index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1", "sentence2",
                 "score"],
        "qqp": ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"],
        "mnli": ["index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
                 "sentence1_parse", "sentence2_parse", "sentence1", "sentence2", "label1", "gold_label"],
        "qnli": ["index", "question", "sentence", "label"], "rte": ["index", "sentence1", "sentence2", "label"],
        "wnli": ["index", "sentence1", "sentence2", "label"],
    }
    return headers[task], rows


def write_glue_task(root: str, task: str, n_train: int = 64, n_dev: int = 24, seed: int = 0) -> str:
    """Write ``root/<DIR>/train.tsv`` and the dev file(s) of ``task`` in its official layout; return the folder."""
    from hf_layerwise.glue import get_task

    spec = get_task(task)
    folder = os.path.join(root, spec.dir_name)
    os.makedirs(folder, exist_ok=True)
    rng = random.Random(seed)
    for split, filename in spec.splits.items():
        header, rows = _rows(spec.name, n_train if split == "train" else n_dev, rng)
        bom = "\ufeff" if spec.name == "mrpc" else ""
        lines = ([bom + "\t".join(header)] if header else []) + ["\t".join(r) for r in rows]
        with open(os.path.join(folder, filename), "w", encoding="utf-8", newline="") as f:
            f.write("\n".join(lines) + ("" if spec.name == "cola" else "\n"))  # CoLA dev has no final newline
    return folder


def make_decoder_dir(path: str, arch: str = "llama", seed: int = 0, layers: int = 4, dropout: float = 0.1,
                     tie: bool = False) -> str:
    """A tiny random decoder LLM (``*ForCausalLM`` weights, as a pretrained decoder is shipped) with a word-level
    tokenizer that has an end-of-sequence token and no padding token (like Llama's and GPT-2's), saved to ``path``."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    os.makedirs(path, exist_ok=True)
    vocab = {tok: i for i, tok in enumerate(["<unk>", "<s>", "</s>"] + WORDS + ['"', ".", ","])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    T.PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>",
                              eos_token="</s>").save_pretrained(path)
    torch.manual_seed(seed)
    common = dict(vocab_size=len(vocab), bos_token_id=1, eos_token_id=2, tie_word_embeddings=tie)
    if arch == "gpt2":
        config = T.GPT2Config(n_embd=32, n_layer=layers, n_head=2, n_positions=128, resid_pdrop=dropout,
                              embd_pdrop=dropout, attn_pdrop=dropout, **common)
    else:
        config = {"llama": T.LlamaConfig, "qwen2": T.Qwen2Config, "mistral": T.MistralConfig}[arch](
            hidden_size=32, intermediate_size=64, num_hidden_layers=layers, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=128, attention_dropout=dropout, **common)
    T.AutoModelForCausalLM.from_config(config).save_pretrained(path)
    return path


def start_resumed(straight, checkpoint: str, resumed, args: list[str], recipe: str = "glue.py",
                  nproc: int = 1) -> Started:
    """A fresh process continues from a copy of one of the uninterrupted run's checkpoints (started, not awaited):
    ``resumed`` gets that checkpoint and the run's manifest, as a kill after that checkpoint leaves the folder."""
    from hf_layerwise.glue.run_dir import MANIFEST

    os.makedirs(resumed)
    shutil.copytree(os.path.join(straight, checkpoint), os.path.join(resumed, checkpoint))
    shutil.copy(os.path.join(straight, MANIFEST), resumed)
    out_at = args.index("--output_dir") + 1
    argv = [*args[:out_at], str(resumed), *args[out_at + 1:], "--resume_from_checkpoint", "latest"]
    return start(recipe, [*argv, "--cpu"] if nproc > 1 else argv, nproc)
