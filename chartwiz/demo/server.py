"""The demo's answers from an OpenAI-compatible ChartWiz server (vLLM): streamed chat completions, the chart inline."""

import base64
import io
from typing import Optional

from PIL import Image


class ServerError(Exception):
    """Why the server gave no answer, in words for the page."""


def image_data_url(image: Image.Image) -> str:
    """The chart as a `data:image/png;base64,...` URL, the way OpenAI's API takes an image inline."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def chat_messages(chart: Image.Image, question: str, history: list) -> list[dict]:
    """
    OpenAI chat messages of a question about `chart` after `history` (`(question, answer)` turns): the chart in the
    first user turn, as the model was trained and as `chartwiz.inference.prompts.chat_messages` puts it.
    """
    messages = []
    for asked, answered in [*history, (question, None)]:
        content = [{"type": "text", "text": asked}]
        if not messages:
            content.insert(0, {"type": "image_url", "image_url": {"url": image_data_url(chart)}})
        messages.append({"role": "user", "content": content})
        if answered is not None:
            messages.append({"role": "assistant", "content": answered})
    return messages


class ServerChat:
    """
    A ChartWiz server at `url` (`http://host:8000/v1`), asked for greedy answers streamed token by token.

    Args:
        url (`str`): the server's OpenAI API base URL.
        model (`str`, *optional*): the served model's name; by default the one the server lists.
        timeout (`float`, defaults to 120): seconds to wait for the server to connect and for each piece of answer.
        api_key (`str`, *optional*): what the server was started with (`--api-key`), if anything.
    """

    def __init__(self, url: str, model: Optional[str] = None, timeout: float = 120.0, api_key: Optional[str] = None):
        from openai import OpenAI

        self.url = url
        # No retries: a user is waiting, and the page says what went wrong at once.
        self.client = OpenAI(base_url=url, api_key=api_key or "EMPTY", timeout=timeout, max_retries=0)
        self._model = model

    def model(self) -> str:
        if self._model is None:
            models = self._call(lambda: self.client.models.list().data)
            if not models:
                raise ServerError(f"{self.url} 서버가 제공하는 모델이 없습니다.")
            self._model = models[0].id
        return self._model

    def _call(self, request):
        import openai

        try:
            return request()
        except openai.APITimeoutError:
            raise ServerError(f"{self.url} 서버가 제때 응답하지 않았습니다. 잠시 후 다시 물어보세요.") from None
        except openai.APIConnectionError:
            raise ServerError(f"{self.url} 서버에 연결할 수 없습니다: 서버가 켜져 있는지 확인하세요.") from None
        except openai.BadRequestError as error:
            # vLLM's own refusal, e.g. "This model's maximum context length is 1024 tokens. However, ..."
            raise ServerError(f"서버가 질문을 받지 않았습니다: {_server_message(error)}") from None
        except openai.APIStatusError as error:
            raise ServerError(f"서버 오류 ({error.status_code}): {_server_message(error)}") from None

    def stream_answer(self, chart: Image.Image, question: str, history: list, max_new_tokens: int, placeholder) -> str:
        """
        The answer to `question` about `chart` (after `history`), shown in `placeholder` (anything with
        `.text(str)`) as it streams in. Raises `ServerError` when the server is down, too slow or refuses.
        """
        model = self.model()
        stream = self._call(
            lambda: self.client.chat.completions.create(
                model=model,
                messages=chat_messages(chart, question, history),
                max_tokens=max_new_tokens,
                temperature=0.0,
                stream=True,
            )
        )
        # Closed however the page stops reading (a new question, a closed tab), so that the server stops generating.
        with stream:
            pieces = self._call(lambda: [*self._shown(stream, placeholder)])
        answer = "".join(pieces).strip()
        placeholder.text(answer)
        return answer

    @staticmethod
    def _shown(stream, placeholder):
        shown = ""
        for chunk in stream:
            piece = chunk.choices[0].delta.content if chunk.choices else None
            if piece:
                shown += piece
                placeholder.text(shown + " ▌")
                yield piece


def _server_message(error) -> str:
    body = getattr(error, "body", None)
    if isinstance(body, dict):
        message = body.get("message") or (body.get("error") or {}).get("message")
        if message:
            return str(message)
    return str(error)


__all__ = ["ServerChat", "ServerError", "chat_messages", "image_data_url"]
