"""The training recipes: `recipes/sft_chartwiz.py` on the tiny model and a small synthetic dataset, on CPU."""

import glob
import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText, AutoProcessor, TrainerCallback

from chartwiz import training
from chartwiz.commands import cli
from chartwiz.inference import answer_questions, load_chartwiz, prepare_inputs

from .conftest import assert_same_answers_under_the_other_major, draw_chart, run_without_chartwiz


REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "recipes"
SCRIPT = RECIPES / "sft_chartwiz.py"
PRETRAIN = "chartwiz-tiny/pretrain/config_full.yaml"
FINETUNE = "chartwiz-tiny/finetune/config_full.yaml"
LORA = "chartwiz-tiny/finetune/config_lora.yaml"


def load_script():
    spec = importlib.util.spec_from_file_location("sft_chartwiz", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    # Importable by name, as `python recipes/sft_chartwiz.py` makes it `__main__`: `datasets` pickles its config class.
    sys.modules["sft_chartwiz"] = module
    spec.loader.exec_module(module)
    return module


sft = load_script()


def parse(recipe: str, **overrides):
    """The script's dataclasses from a recipe and flag overrides, as `python sft_chartwiz.py --config ...` parses."""
    argv = ["--config", str(RECIPES / recipe)]
    for key, value in overrides.items():
        argv += [f"--{key}", str(value).lower() if isinstance(value, bool) else str(value)]
    return sft.make_parser().parse_args_and_config(argv)


def fast(recipe: str, model: str, data: str, output_dir, **overrides):
    """A recipe shrunk to a few steps of two rows, with tiny evaluation."""
    settings = {
        "model_name_or_path": model,
        "dataset_name": data,
        "output_dir": str(output_dir),
        "max_steps": 4,
        "per_device_train_batch_size": 2,
        "per_device_eval_batch_size": 2,
        "max_eval_samples": 2,
        "logging_steps": 1,
        "save_strategy": "no",
    }
    settings.update(overrides)
    return parse(recipe, **settings)


def weights(directory) -> dict:
    return load_file(os.path.join(directory, "model.safetensors"))


def changed_keys(before: dict, after: dict) -> set:
    assert before.keys() == after.keys()
    return {key for key in before if not torch.equal(before[key], after[key])}


def collate_rows(trainer, count: int):
    rows = [dict(trainer.train_dataset[index]) for index in range(count)]
    return rows, trainer.data_collator([dict(row) for row in rows])


pytestmark = pytest.mark.usefixtures("full_precision_training")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """
    One torch thread, as each of the two launched processes gets: with the same arithmetic on both sides, the
    comparisons of weights after Adam (whose first steps move every weight by about the learning rate, whatever the
    size of its gradient) do not hinge on rounding.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def stage1(tiny_dir, chart_data, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("stage1")
    trainer = sft.main(
        *fast(
            PRETRAIN,
            tiny_dir,
            chart_data,
            output_dir,
            tune="projector",
            max_steps=6,
            learning_rate=0.02,
            warmup_ratio=0.0,
        )
    )
    return str(output_dir), trainer


STAGE2 = {
    "tune": "projector_and_language_model",
    "max_steps": 4,
    "gradient_accumulation_steps": 2,
    "save_strategy": "steps",
    "save_steps": 2,
}


@pytest.fixture(scope="module")
def stage2(stage1, chart_data, tmp_path_factory):
    """Stage 2 from stage 1's output, global batch 4 (2 rows x 2 accumulated): the reference of later tests."""
    output_dir = tmp_path_factory.mktemp("stage2")
    trainer = sft.main(*fast(FINETUNE, stage1[0], chart_data, output_dir, **STAGE2))
    return str(output_dir), trainer


# ---------------------------------------------------------------------------------------------------------------
# Recipes and launcher configs
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture()
def gpu_training_arguments(monkeypatch):
    """TrainingArguments that accept the GPU recipes' bf16 and tf32 on this machine and leave no trace behind."""
    import transformers.training_args as training_args_module

    monkeypatch.setattr(training_args_module, "is_torch_bf16_gpu_available", lambda: True)
    monkeypatch.setattr(training_args_module, "is_torch_tf32_available", lambda: True)
    # TrainingArguments(bf16=True) leaves ACCELERATE_MIXED_PRECISION=bf16 in the environment, which a later
    # TrainingArguments(bf16=False) in this process would take up; tf32 flips a global torch flag.
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", os.environ.get("ACCELERATE_MIXED_PRECISION", "no"))
    allow_tf32 = torch.backends.cuda.matmul.allow_tf32
    yield
    torch.backends.cuda.matmul.allow_tf32 = allow_tf32


def test_every_yaml_recipe_parses_into_the_script_dataclasses(gpu_training_arguments):
    recipes = sorted(RECIPES.glob("*/*/config_*.yaml"))
    names = {str(path.relative_to(RECIPES)) for path in recipes}
    for model in ("chartwiz-1.3b", "chartwiz-7b", "chartwiz-tiny"):
        for stage in ("pretrain/config_full.yaml", "finetune/config_full.yaml", "finetune/config_lora.yaml"):
            assert f"{model}/{stage}" in names
    for path in recipes:
        model = path.parent.parent.name
        script_args, training_args, model_args = parse(str(path.relative_to(RECIPES)))
        assert isinstance(script_args, sft.ChartWizScriptArguments), path
        stage = path.parent.name
        # Every recipe, the tiny ones included (on the shipped tiny DePlot), keeps the encoder frozen.
        assert script_args.tune == ("projector" if stage == "pretrain" else "projector_and_language_model"), path
        # The tiny `tables` recipe is stage 2's table rows alone, asked with their instruction, before the mix.
        assert script_args.dataset_config == {"pretrain": "pretrain", "tables": "finetune"}.get(stage, "all"), path
        assert script_args.dataset_tasks == (["table"] if stage == "tables" else None), path
        assert model_args.use_peft == path.name.endswith("_lora.yaml"), path
        # Batches of similar length hold same-shaped tables, whose shape is then learnt as a per-batch prior instead
        # of being read off the chart (docs/reading.md): every recipe draws its batches at random.
        assert not training_args.group_by_length, f"{path}: length-grouped batches teach the model not to read"
    # The original's hyper-parameters
    _, pretrain, _ = parse("chartwiz-1.3b/pretrain/config_full.yaml")
    script_args, finetune, _ = parse("chartwiz-1.3b/finetune/config_full.yaml")
    lora_args, lora, lora_model = parse("chartwiz-1.3b/finetune/config_lora.yaml")
    assert (pretrain.learning_rate, finetune.learning_rate) == (6e-4, 2e-5)
    assert pretrain.per_device_train_batch_size == finetune.per_device_train_batch_size == 16
    assert (lora_model.lora_r, lora_model.lora_alpha, lora_args.projector_learning_rate) == (128, 256, 2e-5)
    assert lora.per_device_train_batch_size == 8
    for args in (pretrain, finetune, lora):
        assert args.num_train_epochs == 3 and args.warmup_ratio == 0.03 and args.max_length == 2048
        assert args.lr_scheduler_type == "cosine" and args.bf16 and args.tf32 and args.gradient_checkpointing


def test_bad_tune_in_a_recipe_is_refused(tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(re.sub(r"(?m)^tune: .*$", "tune: everything", (RECIPES / PRETRAIN).read_text()))
    with pytest.raises(sft.RecipeError, match="tune='everything' is not one of projector, projector_and_language"):
        sft.make_parser().parse_args_and_config(["--config", str(recipe)])
    with pytest.raises(SystemExit):  # on the command line, argparse's own `choices` check
        parse(PRETRAIN, tune="everything")


def test_every_accelerate_config_parses_with_accelerate_and_fsdp_wraps_both_layer_kinds(tiny):
    from accelerate.commands.config.config_args import ClusterConfig
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.launch import prepare_multi_gpu_env

    parser = launch_command_parser()
    launch_options = {action.dest for action in parser._actions}
    expected = {
        "multi_gpu.yaml": ("MULTI_GPU", None),
        "deepspeed_zero2.yaml": ("DEEPSPEED", 2),
        "deepspeed_zero3.yaml": ("DEEPSPEED", 3),
        "fsdp.yaml": ("FSDP", None),
    }
    paths = sorted((RECIPES / "accelerate_configs").glob("*.yaml"))
    assert {path.name for path in paths} == set(expected)
    for path in paths:
        config = ClusterConfig.from_yaml_file(str(path))  # refuses unknown top-level keys
        distributed_type, zero_stage = expected[path.name]
        assert config.distributed_type == distributed_type, path
        assert config.mixed_precision == "bf16", path
        nested = {**(config.deepspeed_config or {}), **(config.fsdp_config or {})}
        # `accelerate launch` turns each nested key into the launch option of that name
        assert set(nested) <= launch_options, f"{path}: {set(nested) - launch_options} are not launch options"
        if zero_stage is not None:
            assert config.deepspeed_config["zero_stage"] == zero_stage
    assert ClusterConfig.from_yaml_file(str(RECIPES / "accelerate_configs/deepspeed_zero3.yaml")).deepspeed_config[
        "zero3_save_16bit_model"
    ], "ZeRO-3 must gather a full checkpoint at save"

    # FSDP exactly as `accelerate launch --config_file fsdp.yaml` sets it up, then its wrap policy on ChartWiz
    args, _, _ = _validate_launch_command(
        parser.parse_args(["--config_file", str(RECIPES / "accelerate_configs/fsdp.yaml"), "train.py"])
    )
    with mock.patch.dict(os.environ, prepare_multi_gpu_env(args)):
        plugin = FullyShardedDataParallelPlugin()
    model, _ = tiny
    plugin.set_auto_wrap_policy(model)
    wrapped = {cls.__name__ for cls in plugin.auto_wrap_policy.keywords["transformer_layer_cls"]}
    assert wrapped == {"Pix2StructVisionLayer", "LlamaDecoderLayer"}
    assert plugin.state_dict_type.name == "FULL_STATE_DICT", "the final save must be one full checkpoint"


# ---------------------------------------------------------------------------------------------------------------
# Data: lengths, completion-only labels, grouping
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_collated_labels_are_the_completions_only(tiny_dir, chart_data, tmp_path):
    trainer, _ = sft.build_trainer(*fast(FINETUNE, tiny_dir, chart_data, tmp_path / "out"))
    processor = trainer.processing_class
    tokenizer = processor.tokenizer
    rows, batch = collate_rows(trainer, 4)
    input_ids, labels, mask = batch["input_ids"], batch["labels"], batch["attention_mask"]
    assert (labels[input_ids == processor.image_token_id] == -100).all(), "image positions carry no loss"
    assert ((input_ids == processor.image_token_id).sum(1) == processor.image_seq_length).all()
    for index, row in enumerate(rows):
        real = int(mask[index].sum())
        assert real == row["length"], "the measured length is the collated one"
        # By hand: the template ends the prompt with "ASSISTANT:" and writes " <answer><eos>"
        answer = f" {row['completion'][0]['content']}{tokenizer.eos_token}"
        expected = tokenizer(answer, add_special_tokens=False)["input_ids"]
        kept = labels[index][labels[index] != -100].tolist()
        assert kept == expected, f"row {index}: loss on {tokenizer.decode(kept)!r}"
        # The answer is the last thing in the row, right before the padding
        assert (labels[index, real - len(expected) : real] != -100).all()
        assert (labels[index, real:] == -100).all() and (mask[index, real:] == 0).all()

    # The trainer's (fused) loss is the mean cross-entropy over those answer tokens and nothing else
    model = trainer.model.eval()
    with torch.no_grad():
        loss = trainer.compute_loss(model, dict(batch))
        logits = model(**{key: value for key, value in batch.items() if key != "labels"}).logits
    expected_loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)
    torch.testing.assert_close(loss, expected_loss, rtol=1e-5, atol=1e-5)


def test_length_grouping_is_seeded_and_keeps_padding_low():
    rng = np.random.default_rng(0)
    lengths = rng.integers(100, 400, size=400).tolist()
    sampler = training.SeededLengthGroupedSampler(8, lengths, seed=3)
    first = list(sampler)
    assert sorted(first) == list(range(400)), "every row once per epoch"
    assert list(training.SeededLengthGroupedSampler(8, lengths, seed=3)) == first, "same seed, same order"
    sampler.set_epoch(1)
    assert list(sampler) != first, "a new order each epoch"
    torch.manual_seed(123)  # the global random state plays no part
    sampler.set_epoch(0)
    assert list(sampler) == first

    def efficiency(order):
        batches = [np.asarray(lengths)[order[start : start + 8]] for start in range(0, len(order), 8)]
        return sum(batch.sum() for batch in batches) / sum(batch.max() * len(batch) for batch in batches)

    assert efficiency(first) > 0.9 > efficiency(rng.permutation(400).tolist())


# ---------------------------------------------------------------------------------------------------------------
# Stage 1 and stage 2
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_stage1_trains_the_projector_only_and_the_loss_goes_down(stage1, tiny_dir):
    output_dir, trainer = stage1
    changed = changed_keys(weights(tiny_dir), weights(output_dir))
    assert changed, "nothing was trained"
    assert all(key.startswith("model.multi_modal_projector.") for key in changed), sorted(changed)
    assert {key for key in weights(tiny_dir) if key.startswith("model.multi_modal_projector.")} == changed

    # The loss of the same rows before and after
    _, batch = collate_rows(trainer, 4)
    losses = []
    for directory in (tiny_dir, output_dir):
        model = AutoModelForImageTextToText.from_pretrained(directory).eval()
        with torch.no_grad():
            losses.append(model(**batch).loss.item())
    assert losses[1] < losses[0] - 0.01, losses

    for name in ("train_results.json", "eval_results.json", "README.md", "NanumGothic.ttf", "modeling_chartwiz.py"):
        assert os.path.isfile(os.path.join(output_dir, name)), name
    pickled = [
        name for name in os.listdir(output_dir) if name.endswith((".bin", ".pt")) and name != "training_args.bin"
    ]
    assert not pickled, "weights are safetensors"
    with open(os.path.join(output_dir, "eval_results.json"), encoding="utf-8") as file:
        eval_loss = json.load(file)["eval_loss"]
    card = Path(output_dir, "README.md").read_text(encoding="utf-8")
    assert "stage 1, projector pretraining" in card and f"{eval_loss:.4f}" in card and "(pretrain)" in card
    assert "| learning rate | 0.02 |" in card


@pytest.mark.slow
def test_the_model_card_is_trls_with_chartwiz_parts(stage1, tiny_dir, chart_data):
    import trl
    from huggingface_hub import ModelCard

    output_dir, _ = stage1
    card = ModelCard.load(os.path.join(output_dir, "README.md"))
    # TRL's own card: its metadata and tags, its sections, the versions it was trained with
    assert {"generated_from_trainer", "trl", "sft"} <= set(card.data.tags)
    assert card.data.model_name == os.path.basename(output_dir)
    assert f"# Model Card for {os.path.basename(output_dir)}" in card.text
    assert "This model was trained with SFT." in card.text and "Cite TRL as:" in card.text
    assert f"- TRL: {trl.__version__}" in card.text
    # ChartWiz's: language and task, the base parts, the data, the settings and losses, a quick start with an image
    # model (TRL's is a text-generation pipeline) and no link to a Hub repo named after a local folder
    assert card.data.language == ["ko"] and card.data.pipeline_tag == "image-text-to-text"
    assert {"chartwiz", "tune-projector"} <= set(card.data.tags)
    assert card.data.base_model is None and not card.data.datasets, "local folders are no Hub ids"
    assert f"fine-tuned version of `{tiny_dir}`" in card.text and "huggingface.co/None" not in card.text
    assert f"| dataset | {chart_data} (pretrain) |" in card.text and "| trained | projector |" in card.text
    assert "AutoModelForImageTextToText.from_pretrained" in card.text and "pipeline(" not in card.text
    sections = [line for line in card.text.splitlines() if line.startswith("#")]
    assert sections.index("### Settings") < sections.index("### Results") < sections.index("### Framework versions")
    assert sections.count("## Quick start") == 1


@pytest.mark.slow
def test_stage1_checkpoint_answers_through_auto_classes_and_remote_code(stage1, tmp_path):
    output_dir, _ = stage1
    chart = tmp_path / "chart.png"
    draw_chart(seed=4).save(chart)
    model = AutoModelForImageTextToText.from_pretrained(output_dir).eval()
    processor = AutoProcessor.from_pretrained(output_dir)
    expected = answer_questions(model, processor, [draw_chart(seed=4)], ["값?"], max_new_tokens=6, min_new_tokens=6)
    script = f"""
        import json
        import torch
        from PIL import Image
        from transformers import AutoModelForImageTextToText, AutoProcessor

        model = AutoModelForImageTextToText.from_pretrained({output_dir!r}, trust_remote_code=True).eval()
        processor = AutoProcessor.from_pretrained({output_dir!r}, trust_remote_code=True)
        messages = [{{"role": "user", "content": [{{"type": "image"}}, {{"type": "text", "text": "값?"}}]}}]
        prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
        inputs = processor(images=Image.open({str(chart)!r}), text=prompt, return_tensors="pt")
        output = model.generate(**inputs, max_new_tokens=6, min_new_tokens=6, do_sample=False)
        answer = processor.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()
        print(json.dumps({{"module": type(model).__module__, "answer": answer}}))
        """
    reply = run_without_chartwiz(script, tmp_path)
    assert reply["module"].startswith("transformers_modules.")
    assert reply["answer"] == expected[0]
    assert_same_answers_under_the_other_major(output_dir, tmp_path / "other-major")


@pytest.mark.slow
def test_stage2_trains_projector_and_language_model_not_the_vision_encoder(stage1, stage2):
    before, after = weights(stage1[0]), weights(stage2[0])
    changed = changed_keys(before, after)
    trained = [key for key in before if not key.startswith("model.vision_tower.")]
    assert set(trained) == changed, sorted(set(trained) ^ changed)
    assert any(key.startswith("model.language_model.layers.") for key in changed)
    assert "lm_head.weight" in changed and any(key.startswith("model.multi_modal_projector.") for key in changed)
    output_dir, trainer = stage2
    assert trainer.state.global_step == 4
    assert AutoModelForImageTextToText.from_pretrained(output_dir).config.model_type == "chartwiz"


def test_optimizer_holds_only_trainable_parameters_with_a_projector_rate(tiny_dir, chart_data, tmp_path):
    for recipe, tune, rate in ((PRETRAIN, "projector", 0.5), (FINETUNE, "projector_and_language_model", 0.25)):
        trainer, _ = sft.build_trainer(
            *fast(
                recipe,
                tiny_dir,
                chart_data,
                tmp_path / tune,
                tune=tune,
                projector_learning_rate=rate,
                learning_rate=0.001,
            )
        )
        model = trainer.model
        optimizer = trainer.create_optimizer()
        names = {id(param): name for name, param in model.named_parameters()}
        grouped = [names[id(param)] for group in optimizer.param_groups for param in group["params"]]
        trainable = [name for name, param in model.named_parameters() if param.requires_grad]
        assert sorted(grouped) == sorted(trainable), "every trainable parameter once, nothing frozen"
        assert not any(name.startswith("model.vision_tower.") for name in trainable)
        if tune == "projector":
            assert all(name.startswith("model.multi_modal_projector.") for name in trainable)
        for group in optimizer.param_groups:
            in_projector = {"multi_modal_projector" in names[id(param)] for param in group["params"]}
            assert len(in_projector) == 1, "projector and other parameters never share a group"
            assert group["lr"] == (rate if in_projector.pop() else 0.001)
        frozen = [param for param in model.parameters() if not param.requires_grad]
        assert all(param.grad is None for param in frozen)


# ---------------------------------------------------------------------------------------------------------------
# Resume and multi-process
# ---------------------------------------------------------------------------------------------------------------


class Interrupted(Exception):
    pass


class InterruptAfterSave(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise Interrupted(f"stopped after saving step {self.step}")


class RecordStart(TrainerCallback):
    start_step = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.start_step = state.global_step


@pytest.mark.slow
def test_interrupted_run_resumes_and_ends_with_the_uninterrupted_weights(stage1, stage2, chart_data, tmp_path, caplog):
    output_dir = tmp_path / "resumed"
    arguments = fast(FINETUNE, stage1[0], chart_data, output_dir, **STAGE2)
    with pytest.raises(Interrupted):
        sft.main(*arguments, callbacks=[InterruptAfterSave(2)])
    assert os.path.isdir(output_dir / "checkpoint-2") and not os.path.exists(output_dir / "model.safetensors")

    record = RecordStart()
    trainer = sft.main(*fast(FINETUNE, stage1[0], chart_data, output_dir, **STAGE2), callbacks=[record])
    assert record.start_step == 2, "resumed at the checkpoint"
    # The script's own INFO lines are shown: it sets up logging as transformers' example scripts do.
    assert f"Resuming from {output_dir / 'checkpoint-2'}" in caplog.text
    assert trainer.state.global_step == 4
    reference, resumed = weights(stage2[0]), weights(output_dir)
    for key in reference:
        torch.testing.assert_close(
            resumed[key], reference[key], rtol=1e-6, atol=1e-7, msg=lambda message, key=key: f"{key}: {message}"
        )


@pytest.mark.slow
def test_a_checkpoint_half_written_by_a_kill_is_skipped_for_the_one_before(
    stage1, stage2, chart_data, tmp_path, caplog
):
    output_dir = tmp_path / "resumed"
    with pytest.raises(Interrupted):
        sft.main(*fast(FINETUNE, stage1[0], chart_data, output_dir, **STAGE2), callbacks=[InterruptAfterSave(2)])
    # What a kill in the middle of saving checkpoint-4 leaves (before the rotation removes checkpoint-2): weights cut
    # short, no trainer state yet.
    last = output_dir / "checkpoint-4"
    shutil.copytree(output_dir / "checkpoint-2", last)
    (last / "trainer_state.json").unlink()
    weights_file = last / "model.safetensors"
    weights_file.write_bytes(weights_file.read_bytes()[: weights_file.stat().st_size // 2])
    assert training.checkpoint_problem(str(last)) == "it has no trainer_state.json"
    (last / "trainer_state.json").write_text((output_dir / "checkpoint-2" / "trainer_state.json").read_text())
    assert "model.safetensors does not load" in training.checkpoint_problem(str(last))

    record = RecordStart()
    with caplog.at_level("WARNING"):
        trainer = sft.main(*fast(FINETUNE, stage1[0], chart_data, output_dir, **STAGE2), callbacks=[record])
    assert f"Skipping {last}" in caplog.text and "model.safetensors does not load" in caplog.text
    assert record.start_step == 2 and trainer.state.global_step == 4
    reference, resumed = weights(stage2[0]), weights(output_dir)
    for key in reference:
        torch.testing.assert_close(resumed[key], reference[key], rtol=1e-6, atol=1e-7)


@pytest.mark.slow
def test_a_model_changed_since_the_run_started_is_refused(stage1, chart_data, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(stage1[0], model)
    output_dir = tmp_path / "run"
    with pytest.raises(Interrupted):
        sft.main(*fast(FINETUNE, str(model), chart_data, output_dir, **STAGE2), callbacks=[InterruptAfterSave(2)])
    # The base trained again in place: same path, same settings, other weights.
    from safetensors.torch import save_file

    trained = weights(model)
    name = sorted(trained)[0]
    trained[name] = trained[name] + 1
    save_file(trained, str(model / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(
        sft.RecipeError, match=r"same settings, but the files of .*model changed \(model.safetensors\)"
    ):
        sft.build_trainer(*fast(FINETUNE, str(model), chart_data, output_dir, **STAGE2))


@pytest.mark.slow
def test_a_dataset_that_is_not_there_is_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--config", str(RECIPES / PRETRAIN), "--output_dir", str(tmp_path / "out")]
        + ["--dataset_name", str(tmp_path / "no-such-charts")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=600,
    )
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert len(errors) == 1 and "no-such-charts (pretrain) cannot be loaded: no such folder here" in errors[0]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_two_processes_equal_one_process_with_the_same_global_batch(stage1, stage2, chart_data, tmp_path):
    output_dir = tmp_path / "two-processes"
    launcher = tmp_path / "launch_with_rank_weights.py"
    launcher.write_text(
        textwrap.dedent(
            f"""
            import importlib.util, os, sys
            from safetensors.torch import save_file
            from transformers import TrainerCallback

            spec = importlib.util.spec_from_file_location("sft_chartwiz", {str(SCRIPT)!r})
            sft = importlib.util.module_from_spec(spec)
            sys.modules["sft_chartwiz"] = sft
            spec.loader.exec_module(sft)

            class SaveRankWeights(TrainerCallback):
                def on_train_end(self, args, state, control, model=None, **kwargs):
                    state_dict = {{key: value.detach().clone() for key, value in model.state_dict().items()}}
                    os.makedirs(args.output_dir, exist_ok=True)
                    save_file(state_dict, os.path.join(args.output_dir, f"rank{{args.process_index}}.safetensors"))

            arguments = sft.make_parser().parse_args_and_config()
            sft.main(*arguments, callbacks=[SaveRankWeights()])
            """
        )
    )
    overrides = {
        "model_name_or_path": stage1[0],
        "dataset_name": chart_data,
        "output_dir": str(output_dir),
        "per_device_train_batch_size": 2,
        "per_device_eval_batch_size": 2,
        "max_eval_samples": 2,
        "logging_steps": 1,
        **STAGE2,
        "gradient_accumulation_steps": 1,  # 2 rows x 2 processes: the reference's 2 rows x 2 accumulated
    }
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",  # with `use_cpu: true` in the recipe: two CPU processes joined over gloo
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(free_port()),
        str(launcher),
        "--config",
        str(RECIPES / FINETUNE),
    ]
    for key, value in overrides.items():
        command += [f"--{key}", str(value)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path, check=False)
    assert result.returncode == 0, result.stderr[-4000:]
    rank0, rank1 = (load_file(output_dir / f"rank{rank}.safetensors") for rank in (0, 1))
    reference = weights(stage2[0])
    saved = weights(output_dir)
    for key in reference:
        assert torch.equal(rank0[key], rank1[key]), f"ranks differ on {key}"
        assert torch.equal(saved[key], rank0[key]), key
        torch.testing.assert_close(
            rank0[key], reference[key], rtol=1e-5, atol=1e-6, msg=lambda message, key=key: f"{key}: {message}"
        )
    state = json.loads((output_dir / "trainer_state.json").read_text())
    assert state["global_step"] == 4 and state["train_batch_size"] == 2


# ---------------------------------------------------------------------------------------------------------------
# LoRA, merge, ask --adapter
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_lora_trains_adapters_and_projector_and_merges_into_the_same_answers(tiny_dir, chart_data, tmp_path, capsys):
    output_dir = tmp_path / "lora"
    trainer = sft.main(*fast(LORA, tiny_dir, chart_data, output_dir))
    peft_model = trainer.model
    base = weights(tiny_dir)
    trainable = {name for name, param in peft_model.named_parameters() if param.requires_grad}
    assert trainable and all("lora_" in name or "modules_to_save" in name for name in trainable), trainable
    assert not any("vision_tower" in name for name in trainable)
    assert any("language_model" in name and "lora_" in name for name in trainable)
    for name, param in peft_model.named_parameters():
        if "lora_" in name or "modules_to_save" in name:
            continue
        key = name.removeprefix("base_model.model.").replace(".base_layer", "").replace(".original_module", "")
        assert torch.equal(param.detach(), base[key]), f"{key} changed"
    projector = {
        name.removeprefix("base_model.model.").replace(".modules_to_save.default", ""): param
        for name, param in peft_model.named_parameters()
        if "modules_to_save" in name
    }
    assert projector and all(key.startswith("model.multi_modal_projector.") for key in projector)
    assert all(not torch.equal(param.detach(), base[key]) for key, param in projector.items()), "projector trained"

    adapter = load_file(output_dir / "adapter_model.safetensors")
    assert not any("vision_tower" in key for key in adapter), "the adapter holds no vision encoder weights"
    assert any("multi_modal_projector" in key for key in adapter), "the projector is saved with the adapter"
    assert any("lora_B" in key and adapter[key].abs().sum() > 0 for key in adapter)
    assert not glob.glob(str(output_dir / "adapter_model.bin"))
    assert "stage 2 with LoRA" in (output_dir / "README.md").read_text(encoding="utf-8")

    merged_dir = tmp_path / "merged"
    assert cli.main(["merge", "--base", tiny_dir, "--adapter", str(output_dir), "--out", str(merged_dir)]) == 0
    assert (merged_dir / "model.safetensors").is_file() and (merged_dir / "modeling_chartwiz.py").is_file()
    merged, processor = load_chartwiz(str(merged_dir))
    unmerged, _ = load_chartwiz(tiny_dir, adapter=str(output_dir))
    assert not any("lora" in key for key in merged.state_dict())
    charts = [draw_chart(seed=5), draw_chart(240, 320, (2, 9, 4), seed=6)]
    questions = ["가장 큰 값은?", "이 차트를 테이블 정보로 변경해줘."]
    inputs = processor(
        images=charts,
        text=[
            processor.apply_chat_template(
                [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}],
                add_generation_prompt=True,
            )
            for q in questions
        ],
        padding=True,
        return_tensors="pt",
    )
    with torch.no_grad():
        torch.testing.assert_close(merged(**inputs).logits, unmerged(**inputs).logits, rtol=1e-4, atol=1e-5)
    kwargs = {"max_new_tokens": 10}
    assert answer_questions(merged, processor, charts, questions, **kwargs) == answer_questions(
        unmerged, processor, charts, questions, **kwargs
    )

    chart_path = tmp_path / "chart.png"
    charts[0].save(chart_path)
    capsys.readouterr()
    ask = ["ask", str(chart_path), "가장 큰 값은?", "--max-new-tokens", "10"]
    assert cli.main([*ask, "--model", tiny_dir, "--adapter", str(output_dir)]) == 0
    with_adapter = capsys.readouterr().out
    assert with_adapter.strip(), "an answer to compare"
    assert cli.main([*ask, "--model", str(merged_dir)]) == 0
    assert capsys.readouterr().out == with_adapter
    assert_same_answers_under_the_other_major(merged_dir, tmp_path / "other-major")


def test_merge_refuses_a_folder_without_an_adapter(tiny_dir, tmp_path, capsys):
    assert cli.main(["merge", "--base", tiny_dir, "--adapter", tiny_dir, "--out", str(tmp_path / "m")]) == 2
    assert "is not a PEFT adapter" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------------
# Push to the Hub
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_push_uploads_a_checkpoint_that_loads_with_the_auto_classes(tiny_dir, chart_data, tmp_path, monkeypatch):
    import huggingface_hub.hf_api
    import transformers.trainer
    from huggingface_hub import CommitInfo, HfApi, ModelCard, RepoUrl

    hub = tmp_path / "hub"
    commits, cards = [], []

    def create_repo(repo_id, **kwargs):
        (hub / repo_id).mkdir(parents=True, exist_ok=True)
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def create_commit(self, repo_id, operations, commit_message, **kwargs):
        # The upload boundary: each operation names a local file and its path in the repo.
        for operation in operations:
            target = hub / repo_id / operation.path_in_repo
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(operation.path_or_fileobj, target)
        commits.append(commit_message)
        url = f"https://huggingface.co/{repo_id}/commit/0"
        return CommitInfo(commit_url=url, commit_message=commit_message, commit_description="", oid="0")

    def validate_yaml(self, content, **kwargs):
        # The Hub checks the card's metadata; here it must at least be a YAML mapping.
        cards.append(ModelCard(content))

    if hasattr(transformers.trainer, "create_repo"):  # transformers 4 calls huggingface_hub.create_repo
        monkeypatch.setattr(transformers.trainer, "create_repo", create_repo)
    else:  # transformers 5 calls it on an HfApi
        monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kwargs: create_repo(repo_id, **kwargs))
    monkeypatch.setattr(HfApi, "create_commit", create_commit)
    monkeypatch.setattr(HfApi, "_validate_yaml", validate_yaml)
    # huggingface_hub 2 streams uploads through its Xet pipeline where hf_xet is installed; the fake Hub takes commits.
    monkeypatch.setattr(huggingface_hub.hf_api, "is_xet_available", lambda: False, raising=False)
    repo = "chartwiz-org/chartwiz-tiny-stage1"
    sft.main(
        *fast(
            PRETRAIN,
            tiny_dir,
            chart_data,
            tmp_path / "out",
            max_steps=1,
            tune="projector",
            push_to_hub=True,
            hub_model_id=repo,
        )
    )
    assert commits and commits[-1] == "End of training"
    assert cards[-1].data.pipeline_tag == "image-text-to-text" and "chartwiz" in cards[-1].data.tags

    uploaded = hub / repo
    names = set(os.listdir(uploaded))
    assert {"model.safetensors", "config.json", "modeling_chartwiz.py", "processing_chartwiz.py"} <= names
    assert {"NanumGothic.ttf", "tokenizer.json", "README.md", "train_results.json", "eval_results.json"} <= names
    assert not any(name.startswith("checkpoint-") for name in names)
    assert "stage 1, projector pretraining" in (uploaded / "README.md").read_text(encoding="utf-8")
    model = AutoModelForImageTextToText.from_pretrained(uploaded).eval()
    processor = AutoProcessor.from_pretrained(uploaded)
    assert processor.image_processor.resolve_font_path() == str(uploaded / "NanumGothic.ttf")
    answer = answer_questions(model, processor, [draw_chart()], ["값?"], max_new_tokens=4)
    assert isinstance(answer[0], str)


# ---------------------------------------------------------------------------------------------------------------
# Bad input: clear errors before any training
# ---------------------------------------------------------------------------------------------------------------


def test_a_config_the_dataset_folder_lacks_is_refused(tiny_dir, chart_data, tmp_path):
    with pytest.raises(sft.RecipeError, match=r"has no 'charts' config \(it has .*finetune.*pretrain"):
        sft.build_trainer(*fast(PRETRAIN, tiny_dir, chart_data, tmp_path / "out", dataset_config="charts"))
    assert not (tmp_path / "out").exists(), "nothing written for a run that never started"


def test_dataset_tasks_keeps_the_rows_of_those_tasks_and_is_part_of_the_run(tiny_dir, chart_data, tmp_path):
    from datasets import load_dataset

    finetune = load_dataset(chart_data, "finetune")
    assert len(set(finetune["train"]["task"])) > 1, "the finetune rows mix tasks, so that keeping one is a test"
    arguments = fast(FINETUNE, tiny_dir, chart_data, tmp_path / "out", dataset_tasks="table", max_eval_samples=1000)
    trainer, _ = sft.build_trainer(*arguments)
    for split, kept in (("train", trainer.train_dataset), ("test", trainer.eval_dataset)):
        tables = finetune[split].filter(lambda task: task == "table", input_columns="task")
        assert sorted(kept["id"]) == sorted(tables["id"]), split
    # Another choice of tasks is another run: its checkpoints are not resumed by a run of every task.
    everything = training.run_definition(*fast(FINETUNE, tiny_dir, chart_data, tmp_path / "out")[::2])
    assert training.run_definition(arguments[0], arguments[2]) != everything
    with pytest.raises(sft.RecipeError, match=r"has no rows of the tasks \['chart'\] \(it has .*table"):
        sft.build_trainer(*fast(FINETUNE, tiny_dir, chart_data, tmp_path / "other", dataset_tasks="chart"))


def test_a_missing_or_empty_split_is_refused(tiny_dir, chart_data, tmp_path, monkeypatch):
    from datasets import DatasetDict, load_dataset

    with pytest.raises(sft.RecipeError, match="has no split 'validation'; it has train, test"):
        sft.build_trainer(*fast(PRETRAIN, tiny_dir, chart_data, tmp_path / "out", dataset_test_split="validation"))
    # A Hub dataset whose train split holds no rows (a `chartwiz data build` folder leaves empty splits out)
    pretrain = load_dataset(chart_data, "pretrain")
    empty = DatasetDict({"train": pretrain["train"].select([]), "test": pretrain["test"]})
    monkeypatch.setattr("chartwiz.training.data.load_dataset", lambda name, config: empty)
    with pytest.raises(sft.RecipeError, match="Split 'train' of dataset org/charts \\(pretrain\\) is empty"):
        sft.build_trainer(*fast(PRETRAIN, tiny_dir, "org/charts", tmp_path / "out"))


def test_a_checkpoint_that_is_not_chartwiz_is_refused(chart_data, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    llama = tmp_path / "llama"
    config = LlamaConfig(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2
    )
    LlamaForCausalLM(config).save_pretrained(llama)
    with pytest.raises(sft.RecipeError, match="holds a 'llama' model, not a ChartWiz model.*chartwiz compose"):
        sft.build_trainer(*fast(PRETRAIN, str(llama), chart_data, tmp_path / "out"))


def test_lora_with_tune_all_is_refused(tiny_dir, chart_data, tmp_path):
    with pytest.raises(sft.RecipeError, match="use_peft with tune='all'.*never the vision encoder"):
        sft.build_trainer(*fast(LORA, tiny_dir, chart_data, tmp_path / "out", tune="all"))


def test_rows_longer_than_the_context_are_named(tiny_dir, chart_data, tmp_path):
    short = tmp_path / "short-context"
    shutil.copytree(tiny_dir, short)
    config = json.loads((short / "config.json").read_text())
    config["text_config"]["max_position_embeddings"] = 96
    (short / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        sft.RecipeError,
        match=r"train rows are longer than the language model's context of 96 tokens"
        r".*row 0 \(id [^)]+\): \d+ tokens.*--max_length 96",
    ):
        sft.build_trainer(*fast(PRETRAIN, str(short), chart_data, tmp_path / "out"))
    # max_length truncates answers, but must never cut into the prompt and its image tokens
    with pytest.raises(sft.RecipeError, match="have a prompt \\(image tokens included\\) longer than max_length=24"):
        sft.build_trainer(*fast(PRETRAIN, tiny_dir, chart_data, tmp_path / "out", max_length=24))
    trainer, _ = sft.build_trainer(*fast(PRETRAIN, str(short), chart_data, tmp_path / "out", max_length=96))
    assert max(trainer.train_dataset["length"]) > 96, "rows longer than max_length are kept (truncated)"


def test_an_output_dir_holding_another_run_is_refused(stage1, chart_data, tiny_dir, tmp_path):
    output_dir = stage1[0]
    with pytest.raises(
        sft.RecipeError, match=r"holds a different run \(dataset_config: 'pretrain' there, 'gpt' now\)"
    ):
        sft.build_trainer(*fast(PRETRAIN, tiny_dir, chart_data, output_dir, dataset_config="gpt", tune="projector"))
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("not a run")
    with pytest.raises(sft.RecipeError, match=f"has no {training.RUN_FILE}, so it is not a run of this script"):
        sft.build_trainer(*fast(PRETRAIN, tiny_dir, chart_data, foreign))
    # --overwrite_output_dir starts over: no resume, old checkpoints removed, the new run recorded
    copy = tmp_path / "copy"
    shutil.copytree(output_dir, copy)
    os.makedirs(copy / "checkpoint-99")
    _, resume_from = sft.build_trainer(
        *fast(PRETRAIN, tiny_dir, chart_data, copy, dataset_config="gpt", overwrite_output_dir=True)
    )
    assert resume_from is None and not (copy / "checkpoint-99").exists()
    assert json.loads((copy / training.RUN_FILE).read_text())["dataset_config"] == "gpt"


def test_a_checkpoint_whose_weights_do_not_fit_is_refused(tiny_dir, chart_data, tmp_path):
    from .conftest import damaged_checkpoint

    broken = str(tmp_path / "broken")
    hit = damaged_checkpoint(tiny_dir, broken, reshape=1, extra=1)
    with pytest.raises(sft.RecipeError, match=r"the weights do not fit the model: 1 unexpected .*1 of another shape"):
        sft.build_trainer(*fast(PRETRAIN, broken, chart_data, tmp_path / "out"))
    with pytest.raises(sft.RecipeError, match=re.escape(hit[0])):
        sft.build_trainer(*fast(PRETRAIN, broken, chart_data, tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_merge_refuses_a_used_folder_another_base_and_other_shapes_in_one_line(tiny_dir, tmp_path, capsys):
    from peft import LoraConfig, get_peft_model

    from chartwiz.fingerprints import checkpoint_fingerprint

    base, _ = load_chartwiz(tiny_dir)
    adapter = tmp_path / "adapter"
    get_peft_model(
        base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    ).save_pretrained(adapter)
    same_shapes, other_shapes = str(tmp_path / "seed5"), str(tmp_path / "wider")
    assert cli.main(["init-tiny", same_shapes, "--max-patches", "16", "--seed", "5"]) == 0
    assert cli.main(["init-tiny", other_shapes, "--max-patches", "16", "--hidden-size", "32"]) == 0
    capsys.readouterr()

    def merge(base_dir, out, *extra):
        code = cli.main(["merge", "--base", base_dir, "--adapter", str(adapter), "--out", str(out), *extra])
        # transformers 5 draws a weight-loading progress bar on stderr first; the error is the last line.
        stderr = capsys.readouterr().err.replace("\r", "\n").strip()
        assert "Traceback" not in stderr
        return code, stderr.splitlines()[-1] if stderr else ""

    used = tmp_path / "used"
    used.mkdir()
    (used / "notes.txt").write_text("mine")
    assert merge(tiny_dir, used) == (
        2,
        f"chartwiz merge: error: {used} is not empty; pass --overwrite to replace what is there.",
    )
    code, error = merge(tiny_dir, used, "--overwrite")
    assert code == 2 and "holds files that are not a saved model, adapter or training run (notes.txt)" in error
    # Over a folder that held an adapter, the merged checkpoint's files and nothing else: a stale
    # adapter_config.json would make the merged folder apply the adapter a second time when it loads.
    assert merge(tiny_dir, tmp_path / "fresh")[0] == 0
    over_adapter = tmp_path / "over-adapter"
    shutil.copytree(adapter, over_adapter)
    assert merge(tiny_dir, over_adapter, "--overwrite")[0] == 0
    assert sorted(os.listdir(over_adapter)) == sorted(os.listdir(tmp_path / "fresh"))
    chart = draw_chart()
    logits = []
    for folder in (tmp_path / "fresh", over_adapter):
        model, processor = load_chartwiz(str(folder))
        with torch.no_grad():
            logits.append(model(**prepare_inputs(processor, [chart], ["합계는?"])).logits)
    torch.testing.assert_close(logits[0], logits[1], rtol=0, atol=0)
    # The adapter's own folder, or the base's, is not one to write over.
    code, error = merge(tiny_dir, adapter, "--overwrite")
    assert code == 2 and "which this command reads" in error and (adapter / "adapter_config.json").is_file()

    # The adapter names its base (adapter_config.json): another model of the same shapes is refused...
    code, error = merge(same_shapes, tmp_path / "m1")
    assert (
        code == 2
        and f"was trained on {tiny_dir} (its base_model_name_or_path), and {same_shapes} holds other files" in error
    )
    assert "model.safetensors" in error and not (tmp_path / "m1").exists()
    # ...and a model of other shapes is one line too, also when the check is waived.
    code, error = merge(other_shapes, tmp_path / "m2", "--no-base-check")
    assert code == 2 and f"{adapter} does not fit {other_shapes}: " in error
    assert "weights have another shape" in error and "lora_A" in error and "in the adapter" in error
    assert merge(same_shapes, tmp_path / "m3", "--no-base-check")[0] == 0, "waived on purpose"

    # A recipe's adapter records its base's fingerprint: a copy of the base is the base, another model is not.
    (adapter / "chartwiz_run.json").write_text(json.dumps({"model_fingerprint": checkpoint_fingerprint(tiny_dir)}))
    copy = tmp_path / "copy"
    shutil.copytree(tiny_dir, copy)
    assert merge(str(copy), tmp_path / "m4")[0] == 0
    code, error = merge(same_shapes, tmp_path / "m5")
    assert code == 2 and "is not the model" in error and "differ from those recorded in chartwiz_run.json" in error
