"""Legacy callback event types and payload keys, with LlamaIndex's names and values."""

from __future__ import annotations

from enum import Enum

__all__ = ["BASE_TRACE_EVENT", "CBEventType", "EventPayload"]

BASE_TRACE_EVENT = "root"


class CBEventType(str, Enum):
    """Kinds of callback events."""

    CHUNKING = "chunking"
    NODE_PARSING = "node_parsing"
    EMBEDDING = "embedding"
    LLM = "llm"
    QUERY = "query"
    RETRIEVE = "retrieve"
    SYNTHESIZE = "synthesize"
    TREE = "tree"
    SUB_QUESTION = "sub_question"
    TEMPLATING = "templating"
    FUNCTION_CALL = "function_call"
    RERANKING = "reranking"
    EXCEPTION = "exception"
    AGENT_STEP = "agent_step"


class EventPayload(str, Enum):
    """Keys of callback event payloads."""

    DOCUMENTS = "documents"
    CHUNKS = "chunks"
    NODES = "nodes"
    PROMPT = "formatted_prompt"
    MESSAGES = "messages"
    COMPLETION = "completion"
    RESPONSE = "response"
    QUERY_STR = "query_str"
    SUB_QUESTION = "sub_question"
    EMBEDDINGS = "embeddings"
    TOP_K = "top_k"
    ADDITIONAL_KWARGS = "additional_kwargs"
    SERIALIZED = "serialized"
    FUNCTION_CALL = "function_call"
    FUNCTION_OUTPUT = "function_call_response"
    TOOL = "tool"
    MODEL_NAME = "model_name"
    TEMPLATE = "template"
    TEMPLATE_VARS = "template_vars"
    SYSTEM_PROMPT = "system_prompt"
    QUERY_WRAPPER_PROMPT = "query_wrapper_prompt"
    EXCEPTION = "exception"
