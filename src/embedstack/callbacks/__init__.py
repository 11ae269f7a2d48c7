"""Legacy LlamaIndex-style callbacks: CallbackManager and its handlers."""

from embedstack.callbacks.base_handler import BaseCallbackHandler
from embedstack.callbacks.manager import CallbackManager, EventContext
from embedstack.callbacks.schema import CBEventType, EventPayload

__all__ = ["BaseCallbackHandler", "CBEventType", "CallbackManager", "EventContext", "EventPayload"]
