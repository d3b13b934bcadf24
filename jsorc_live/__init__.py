"""The live JSORC: runtime, action servers, API and controller (see the live-system issue)."""
