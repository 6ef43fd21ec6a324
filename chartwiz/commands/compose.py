"""`chartwiz compose`: join a Pix2Struct / DePlot encoder and a causal LM into a ChartWiz checkpoint."""

from dataclasses import dataclass, field

from chartwiz.files import OVERWRITE_HELP, replacing_folder
from chartwiz.names import CHAT_TEMPLATES

from .parser import same_named


@dataclass(kw_only=True)
class ComposeArguments:
    vision: str = field(metadata={"help": "Pix2Struct/DePlot checkpoint (e.g. google/deplot)"})
    text: str = field(metadata={"help": "causal LM with its tokenizer (e.g. maywell/Synatra-42dot-1.3B)"})
    out: str = field(metadata={"help": "output directory (new or empty, unless --overwrite)"})
    projector_type: str = field(default="mlp2x_gelu", metadata={"help": "linear, identity or mlp{N}x_gelu"})
    max_patches: int = field(default=512, metadata={"help": "patches (= image tokens) per image"})
    template: str = field(default="synatra_mini", metadata={"help": "chat template", "choices": CHAT_TEMPLATES})
    seed: int = field(default=0, metadata={"help": "seed of the new projector's initialization"})
    trust_remote_code: bool = field(default=False, metadata={"help": "allow the LM's own code from the Hub"})
    overwrite: bool = field(default=False, metadata={"help": OVERWRITE_HELP})


def run(args: ComposeArguments):
    from chartwiz_hf.compose import compose_chartwiz

    with replacing_folder(args.out, args.overwrite, inputs=(args.vision, args.text)):
        compose_chartwiz(
            args.vision,
            args.text,
            output_dir=args.out,
            chat_template=args.template,
            **same_named(args, compose_chartwiz),
        )
    print(f"Saved ChartWiz (model + processor) to {args.out}")


NAME = "compose"
HELP = "join a Pix2Struct/DePlot encoder and a causal LM into a checkpoint"


def register(subcommands) -> None:
    parser = subcommands.add_parser(
        NAME,
        dataclass_types=[ComposeArguments],
        help=HELP,
        description=(
            "Joins the encoder of a Pix2Struct / DePlot checkpoint and a causal language model with its tokenizer "
            "into a ChartWiz checkpoint, with a new projector, ready for stage-1 training.\n"
            "Pix2Struct/DePlot 인코더와 인과 언어 모델을 새 프로젝터로 이어 "
            "1단계 학습을 시작할 ChartWiz 체크포인트를 만듭니다."
        ),
    )
    parser.set_defaults(func=run)
