"""Upstream chat models and this branch's fields: a grammar is refused (the remote would not enforce ours),
logit_bias is forwarded in OpenAI's form, /tokenize is refused."""
import pytest

from models.llm.guided import Grammar
from models.llm.types import SamplingParams
from serving.clients import GenerationRequest
from serving.errors import InvalidRequestError
from serving.upstream.chat import UpstreamChatClient, sampling_fields

MESSAGES = [{"role": "user", "content": "hi"}]


async def test_a_grammar_is_refused_before_any_call():
    client = UpstreamChatClient(transport=None, remote_model="m")  # no transport: nothing may be sent
    request = GenerationRequest("r", SamplingParams(), messages=MESSAGES, grammar=Grammar("json_object"))
    with pytest.raises(InvalidRequestError) as e:
        await anext(client.generate(request))
    assert e.value.param == "response_format"
    with pytest.raises(InvalidRequestError):
        await client.tokenize(request, True)


def test_logit_bias_is_forwarded_with_string_keys():
    assert sampling_fields(SamplingParams(logit_bias={5: -100.0}), chat=True)["logit_bias"] == {"5": -100.0}
    assert "logit_bias" not in sampling_fields(SamplingParams(), chat=True)
