"""Schemathesis hooks for scripts/fuzz.sh (loaded through SCHEMATHESIS_HOOKS).

The served OpenAPI document types `stream` as an optional nullable boolean and `max_tokens`
as any int64, so plain generation almost never asks for a streamed answer (Hypothesis tends to
leave optional fields out) and nearly always asks for more tokens than `--max-model-len`
allows (an immediate 400). This hook re-draws those two fields (`max_output_tokens` for
/v1/responses, which has no `stream_options.include_usage`), through Hypothesis so that the
run stays reproducible from its seed, for a share of the generated bodies of the three
generating operations. Nothing else is touched: the model id and the chat roles come from the dictionaries
in schemathesis.toml, every other field is exactly what Schemathesis generated.

Schemathesis revalidates a case a hook changed, so a negative case that this hook happened to
make valid is counted as positive again (negative_data_rejection stays sound).
"""

import schemathesis
from hypothesis import strategies as st

GENERATING = {"/v1/chat/completions", "/v1/completions", "/v1/responses"}

# (stream, include_usage) variants; None leaves the generated value as it is.
_STREAM = st.sampled_from([None, None, (True, None), (True, True), (True, False), (False, None)])
# None leaves `max_tokens` as generated; small values keep prompt + completion inside
# --max-model-len so the request reaches the scheduler and the sampler.
_MAX_TOKENS = st.one_of(st.none(), st.none(), st.integers(min_value=0, max_value=12))


def _apply(path, body, stream, max_tokens):
    body = dict(body)
    responses = path == "/v1/responses"
    if stream is not None:
        on, include_usage = stream
        body["stream"] = on
        if include_usage is not None and not responses:
            body["stream_options"] = {"include_usage": include_usage}
    if max_tokens is not None:
        body["max_output_tokens" if responses else "max_tokens"] = max_tokens
    return body


@schemathesis.hook
def flatmap_body(context, body):
    operation = context.operation
    if operation is None or operation.path not in GENERATING or not isinstance(body, dict):
        return st.just(body)
    path = operation.path
    return st.tuples(_STREAM, _MAX_TOKENS).map(lambda drawn: _apply(path, body, *drawn))
