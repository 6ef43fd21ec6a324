"""`chartwiz ask`: answer one question about a chart (an image, or a page of a PDF), streaming the answer."""

import sys
from dataclasses import dataclass, field
from typing import Optional

from chartwiz.errors import ChartWizValueError


@dataclass(kw_only=True)
class AskArguments:
    model: str = field(metadata={"help": "ChartWiz checkpoint directory or Hub repo"})
    image: str = field(metadata={"help": "chart image file, or a PDF (with --page)", "positional": True})
    question: str = field(metadata={"help": "the question, e.g. '가장 큰 값은?'", "positional": True})
    page: Optional[int] = field(
        default=None, metadata={"help": "page of a PDF to ask about, 1-based (default: a one-page PDF's page)"}
    )
    adapter: Optional[str] = field(default=None, metadata={"help": "a PEFT (LoRA) adapter folder to apply, unmerged"})
    max_new_tokens: int = field(
        default=256, metadata={"help": "answer length limit (lowered with a note to fit the context)"}
    )
    device: Optional[str] = field(
        default=None, metadata={"help": "cpu, cuda, cuda:1... (default: where the model loads)"}
    )


def load_chart(path: str, page=None):
    """The chart of `path`: the image, or page `page` (1-based) of a PDF; a one-page PDF needs no page number."""
    from chartwiz.inference.images import load_chart_image
    from chartwiz.inference.pdf import is_pdf, pdf_page_count, render_pdf_page

    if not is_pdf(path):
        if page is not None:
            raise ChartWizValueError(f"{path} is not a PDF; --page is for PDF files")
        return load_chart_image(path)
    if page is None:
        pages = pdf_page_count(path)
        if pages > 1:
            raise ChartWizValueError(f"{path} has {pages} pages: choose the one with the chart with --page N")
        page = 1
    return render_pdf_page(path, page)


def run(args: AskArguments):
    from transformers import TextStreamer

    from chartwiz.inference.generation import generate_answers
    from chartwiz.inference.loading import check_device, load_chartwiz
    from chartwiz.inference.prompts import check_question, context_length, fit_new_tokens, prepare_inputs

    question = check_question(args.question)
    if args.max_new_tokens < 1:
        raise ChartWizValueError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}.")
    device = check_device(args.device)
    image = load_chart(args.image, args.page)
    model, processor = load_chartwiz(args.model, device=device, adapter=args.adapter)
    inputs = prepare_inputs(processor, [image], [question])
    # Checked before the first token: the model would otherwise stream part of an answer and then stop on an error.
    max_new_tokens = fit_new_tokens(inputs, model.config, args.max_new_tokens, clamp=True)
    if max_new_tokens < args.max_new_tokens:
        print(
            f"note: the prompt takes {inputs['input_ids'].shape[1]} of the model's "
            f"{context_length(model.config)} context tokens, so at most {max_new_tokens} new "
            f"tokens are generated instead of {args.max_new_tokens}.",
            file=sys.stderr,
        )
    streamer = TextStreamer(processor.tokenizer, skip_prompt=True, skip_special_tokens=True)
    generate_answers(model, processor, inputs, max_new_tokens, streamer=streamer)


NAME = "ask"
HELP = "answer one question about a chart, streaming the answer"


def register(subcommands) -> None:
    parser = subcommands.add_parser(
        NAME,
        dataclass_types=[AskArguments],
        help=HELP,
        description=(
            "Answers one question about a chart image, or a page of a PDF report, streaming the answer.\n"
            "차트 이미지나 PDF 보고서의 한 쪽에 대한 질문 하나에 답하고, 답을 생성되는 대로 보여 줍니다."
        ),
    )
    parser.set_defaults(func=run)
