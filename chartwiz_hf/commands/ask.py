"""`chartwiz ask`: answer one question about a chart, streaming the answer."""


def run(args):
    from transformers import TextStreamer

    from ..inference import answer_questions, check_question, load_chart_image, load_chartwiz

    question = check_question(args.question)
    image = load_chart_image(args.image)
    model, processor = load_chartwiz(args.model, device=args.device, adapter=args.adapter)
    streamer = TextStreamer(processor.tokenizer, skip_prompt=True, skip_special_tokens=True)
    answer_questions(model, processor, [image], [question], max_new_tokens=args.max_new_tokens, streamer=streamer)


def register(subcommands) -> None:
    parser = subcommands.add_parser("ask", help="answer one question about a chart, streaming the answer")
    parser.add_argument("--model", required=True, help="ChartWiz checkpoint directory or Hub repo")
    parser.add_argument("image", help="chart image file")
    parser.add_argument("question", help="the question, e.g. '가장 큰 값은?'")
    parser.add_argument("--adapter", default=None, help="a PEFT (LoRA) adapter folder to apply, unmerged")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1... (default: where the model loads)")
    parser.set_defaults(func=run, prog=parser.prog)
