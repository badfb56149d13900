"""sft: models/base fine-tuned on prompt → chosen response of the filtered train pairs (full or LoRA);
on data with ground truth the loss is also measured on the test pairs whose chosen response is sound
(test_sound_loss), the answers a model should give."""

from pathlib import Path

from gptpipe import figures as plots
from gptpipe.config import SftConfig, SharedConfig, load_params
from gptpipe.data.batches import lm_examples
from gptpipe.data.subsets import sound_test_pairs
from gptpipe.data.tokenizer import encode, load_tokenizer, read_arrow
from gptpipe.data.loss_targets import loss_on_for_data
from gptpipe.data.turns import TurnMarkers
from gptpipe.entry import run_stage
from gptpipe.files import write_json, write_tsv
from gptpipe.models.gpt2 import load_model
from gptpipe.models.lora import add_lora, save_finetuned
from gptpipe.train.checkpoint import discard, run_key
from gptpipe.train.language_model import fit_language_model, series_rows
from gptpipe.train.runtime import make_runtime
from gptpipe.train.sharding import full_weights
from gptpipe.train.memory_plan import check_host_memory


def run(shared: SharedConfig, train: SftConfig, subset: Path, tokenized: Path, raw_test: Path | None, base: Path,
        out: Path, metrics: Path, plots_dir: Path, checkpoints: Path, data_metrics: Path) -> dict:
    loss_on = loss_on_for_data(train.loss_on, data_metrics)
    runtime = make_runtime(shared)
    tables = {"train": read_arrow(subset), "test": read_arrow(tokenized / "test.arrow")}
    sound = sound_test_pairs(tables["test"], raw_test) if raw_test is not None else None
    if sound is not None:
        tables["test_sound"] = sound
    vocab = load_tokenizer(base)  # the base model's own: saved beside it when trained, else GPT-2's
    markers = TurnMarkers.encoded_by(lambda text: encode(text, vocab))  # this tokenizer's ids for HH's markers
    data = {name: lm_examples(t, loss_on, ("chosen",), markers) for name, t in tables.items()}
    model = load_model(base)
    add_lora(model, train.lora, shared.seed)
    inputs = [subset, tokenized / "test.arrow", *([raw_test] if raw_test else []), *sorted(base.glob("*.safetensors"))]
    key = run_key("sft", [shared, train], inputs)
    checkpoint = checkpoints / f"sft-{key}.pt"
    state, figures = fit_language_model(model, data, train, runtime, seed=shared.seed, checkpoint=checkpoint, desc="sft",
                                        token_bytes=vocab.token_bytes())
    figures["loss_on"] = loss_on  # as applied: auto resolved by the data's format
    figures["lora_rank"] = train.lora.rank
    figures["trainable_fraction"] = round(figures["trainable_parameters"] / figures["parameters"], 6)
    with full_weights(model):  # a collective under FSDP: every rank gathers, the main one saves
        if runtime.is_main:
            save_finetuned(model, out, train.lora, vocab)
            write_tsv(plots_dir / "loss.tsv", series_rows(state.rows))
            plots.loss_curves(state.rows, plots_dir / "loss.png", "sft: loss per counted token")
            plots.memory_bars(figures["memory"], plots_dir / "memory.png", f"sft: training memory ({figures['optimizer']})")
            write_json(metrics, figures)
            discard(checkpoint)
    return figures


def main(subset: Path, tokenized: Path, raw_test: Path, base: Path, out: Path, metrics: Path, plots: Path,
         checkpoints: Path, data_metrics: Path) -> None:
    params = load_params("params.yaml")
    check_host_memory(params, "train")  # before any work: a CPU run that cannot fit stops here
    run(params.shared, params.train, subset, tokenized, raw_test, base, out, metrics, plots, checkpoints, data_metrics)


if __name__ == "__main__":
    run_stage(main, distributed=True)
