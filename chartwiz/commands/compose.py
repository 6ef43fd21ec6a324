"""`chartwiz compose`: join a Pix2Struct / DePlot encoder and a causal LM into a ChartWiz checkpoint."""

from chartwiz.files import OVERWRITE_HELP, replacing_folder
from chartwiz_hf.chat_templates import CHAT_TEMPLATES


def run(args):
    from chartwiz_hf.compose import compose_chartwiz

    with replacing_folder(args.out, args.overwrite, inputs=(args.vision, args.text)):
        compose_chartwiz(
            args.vision,
            args.text,
            output_dir=args.out,
            projector_type=args.projector_type,
            max_patches=args.max_patches,
            chat_template=args.template,
            trust_remote_code=args.trust_remote_code,
            seed=args.seed,
        )
    print(f"Saved ChartWiz (model + processor) to {args.out}")


def register(subcommands) -> None:
    parser = subcommands.add_parser(
        "compose",
        help="join a Pix2Struct/DePlot encoder and a causal LM into a checkpoint",
        description=(
            "Joins the encoder of a Pix2Struct / DePlot checkpoint and a causal language model with its tokenizer "
            "into a ChartWiz checkpoint, with a new projector, ready for stage-1 training.\n"
            "Pix2Struct/DePlot 인코더와 인과 언어 모델을 새 프로젝터로 이어 "
            "1단계 학습을 시작할 ChartWiz 체크포인트를 만듭니다."
        ),
    )
    parser.add_argument("--vision", required=True, help="Pix2Struct/DePlot checkpoint (e.g. google/deplot)")
    parser.add_argument("--text", required=True, help="causal LM with its tokenizer (e.g. maywell/Synatra-42dot-1.3B)")
    parser.add_argument("--out", required=True, help="output directory (new or empty, unless --overwrite)")
    parser.add_argument("--projector-type", default="mlp2x_gelu", help="linear, identity or mlp{N}x_gelu")
    parser.add_argument("--max-patches", type=int, default=512, help="patches (= image tokens) per image")
    parser.add_argument("--template", default="synatra_mini", choices=CHAT_TEMPLATES, help="chat template")
    parser.add_argument("--seed", type=int, default=0, help="seed of the new projector's initialization")
    parser.add_argument("--trust-remote-code", action="store_true", help="allow the LM's own code from the Hub")
    parser.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    parser.set_defaults(func=run, prog=parser.prog)
