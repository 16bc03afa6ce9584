"""The shipped agents: each names the documents it reads, its prompt, and where its output is remembered."""

from __future__ import annotations

from agents.base import Agent


class Analyst(Agent):
    name = "analyst"
    prompt = "You are a business analyst. Extract the goals, actors and open questions from the text."
    memory_key = "analysis"


class Summarizer(Agent):
    name = "summarizer"
    prompt = "You are an editor. Summarize the analysis in three sentences."
    memory_key = "summary"


class ScrumMaster(Agent):
    name = "sm"
    requires_docs = ("prd",)
    prompt = "You are a scrum master. Draft a user story with acceptance criteria from the PRD and the request."
    memory_key = "story_draft"


class Developer(Agent):
    name = "dev"
    requires_docs = ("architecture",)
    prompt = "You are a senior developer. Plan the implementation of the story within the architecture."
    memory_key = "dev_plan"


class QA(Agent):
    name = "qa"
    requires_docs = ("prd", "architecture")
    prompt = "You are a QA engineer. Review the story and the plan; list the risks and the tests to write."
    memory_key = "qa_review"
