"""base: the model fine-tuning starts from: hub GPT-2 as it is (measured on this data), or a scratch
GPT-2 of the model section's shape pretrained on the training dialogues, good and bad answers alike,
as web text holds both."""

from pathlib import Path

from gptpipe import figures as plots
from gptpipe.config import BaseConfig, ModelConfig, SharedConfig, load_params
from gptpipe.data.batches import lm_examples
from gptpipe.data.tokenizer import load_tokenizer, read_splits
from gptpipe.entry import run_stage
from gptpipe.files import write_json, write_tsv
from gptpipe.models.gpt2 import build_scratch, load_pretrained, save_model
from gptpipe.train.checkpoint import discard, run_key
from gptpipe.train.flops import ModelShape, count_params
from gptpipe.train.language_model import fit_language_model, measure_language_model, series_rows
from gptpipe.train.runtime import make_runtime
from gptpipe.train.sharding import full_weights
from gptpipe.train.memory_plan import check_host_memory


def run(shared: SharedConfig, model: ModelConfig, base: BaseConfig, tokenizer: Path, tokenized: Path, out: Path,
        metrics: Path, plots_dir: Path, checkpoints: Path) -> dict:
    runtime = make_runtime(shared)
    vocab = load_tokenizer(tokenizer)  # the model's vocabulary, saved beside it when trained
    # Pretraining counts every token of whole dialogues, both responses.
    data = {split: lm_examples(t, "all", ("chosen", "rejected")) for split, t in read_splits(tokenized).items()}
    if model.init == "pretrained":
        return _measure_hub_model(model, base, runtime, data, shared.seed, out, metrics, plots_dir, vocab)
    net = build_scratch(model, shared.seed, vocab.vocab_size, vocab.eot_id)
    key = run_key("base", [shared, model, base], [tokenized / "train.arrow", tokenized / "test.arrow"])
    checkpoint = checkpoints / f"base-{key}.pt"
    state, figures = fit_language_model(net, data, base, runtime, seed=shared.seed, checkpoint=checkpoint, desc="base",
                                        token_bytes=vocab.token_bytes())
    figures["lora_rank"] = 0
    figures["trainable_fraction"] = round(figures["trainable_parameters"] / figures["parameters"], 6)
    with full_weights(net):  # a collective under FSDP: every rank gathers, the main one saves
        if runtime.is_main:
            save_model(net, out, vocab)
            _write_outputs(state.rows, figures, metrics, plots_dir)
            discard(checkpoint)
    return figures


def _measure_hub_model(model, base, runtime, data, seed, out, metrics, plots_dir, vocab) -> dict:
    net = load_pretrained(model.name)  # GPT-2's BPE: params refuse hub weights with a trained tokenizer
    row = measure_language_model(net, data, base, runtime, seed, vocab.token_bytes())
    figures = {
        "init": "pretrained", "name": model.name,
        "parameters": count_params(ModelShape.from_config(net.config)),
        **{k: row[k] for k in ("train_loss", "test_loss", "train_bpb", "test_bpb")},
    }
    if runtime.is_main:  # under torchrun every rank measured; one writes
        save_model(net.cpu(), out)
        _write_outputs([row], figures, metrics, plots_dir)
    return figures


def _write_outputs(rows, figures, metrics: Path, plots_dir: Path) -> None:
    write_tsv(plots_dir / "loss.tsv", series_rows(rows))
    plots.loss_curves(rows, plots_dir / "loss.png", "base: loss per counted token")
    write_json(metrics, figures)


def main(tokenizer: Path, tokenized: Path, out: Path, metrics: Path, plots: Path, checkpoints: Path) -> None:
    params = load_params("params.yaml")
    check_host_memory(params, "base")  # before any work: a CPU run that cannot fit stops here
    run(params.shared, params.model, params.base, tokenizer, tokenized, out, metrics, plots, checkpoints)


if __name__ == "__main__":
    run_stage(main, distributed=True)
