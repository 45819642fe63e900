"""A1111 prompt syntax: attention, BREAK, scheduling, alternation, AND, <lora:...>, 75-token chunks."""

from loracam.prompts.attention import parse_attention
from loracam.prompts.encode import ENCODERS, Encoded, PromptEncoder, SDXLPromptEncoder, encoder_for
from loracam.prompts.inspect import inspect_prompt
from loracam.prompts.multicond import split_and
from loracam.prompts.networks import LoraRef, extract_networks
from loracam.prompts.schedule import prompt_schedule, text_at_step
from loracam.prompts.tokens import CHUNK, Chunk, Chunker

__all__ = [
    "CHUNK", "ENCODERS", "Chunk", "Chunker", "Encoded", "SDXLPromptEncoder", "encoder_for", "LoraRef", "PromptEncoder", "extract_networks", "inspect_prompt",
    "parse_attention", "prompt_schedule", "split_and", "text_at_step",
]
