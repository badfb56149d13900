"""generate: one model's answers to a fixed sample of test prompts (KV cache, left padding,
temperature/top-p/top-k, stops at end of text or the next Human turn, seeded per prompt).

dvc.yaml runs one stage per model in generate.models, so a new DPO reruns only its own answers; the
prompts and their seeds depend on generate.seed only, so every model answers the same prompts with
the same random numbers."""

from dataclasses import asdict
from pathlib import Path

from gptpipe.config import GenerateConfig, load_params
from gptpipe.data.tokenizer import load_tokenizer
from gptpipe.entry import run_stage
from gptpipe.evaluation.generate import (
    Sampling, generate, generation_metrics, model_folder, prompt_seed, sample_prompts, write_answers,
)
from gptpipe.files import atomic_path, write_json
from gptpipe.models.gpt2 import load_model
from gptpipe.train.runtime import inference_device


def run(device: str, cfg: GenerateConfig, name: str, raw_test: Path, model: Path, out: Path, metrics: Path,
        progress: bool = True) -> dict:
    prompts = sample_prompts(raw_test, cfg.n_prompts, cfg.seed)
    seeds = [prompt_seed(cfg.seed, p["id"]) for p in prompts]
    sampling = Sampling.from_config(cfg)
    net = load_model(model).to(inference_device(device))
    tokenizer = load_tokenizer(model)  # the model's own: beside it when trained, else GPT-2's
    result = generate(net, tokenizer.encode_batch([p["prompt"] for p in prompts]), sampling, seeds, cfg.batch_size,
                      progress, desc=name, tokenizer=tokenizer)
    figures = {"model": name, "prompts": len(prompts), **asdict(sampling), "batch_size": cfg.batch_size,
               **generation_metrics(result)}
    with atomic_path(out) as tmp:
        write_answers(tmp, prompts, result.answers)
    write_json(metrics, figures)
    return figures


def main(name: str, raw_test: Path, models: Path, out: Path, metrics: Path) -> None:
    params = load_params("params.yaml")
    run(params.shared.device, params.generate, name, raw_test, model_folder(name, models), out, metrics)


if __name__ == "__main__":
    run_stage(main)
