"""The cues of the request taxonomy (`routing.taxonomy`): weighted RE2 patterns.

Data more than logic, kept apart so the taxonomy's rules stay readable. Each task type
and each complexity signal has a few cues; a cue's weight says how strongly it points
at its group (2-3: nearly decisive, like "translate" or a `def f(`; 0.5-1: suggestive,
like "why" or a number with a unit). The cues are English: a request in another
language is mostly `other`, and its complexity is read from its length.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["COMPLEXITY_MARKERS", "TASK_MARKERS", "Marker"]


@dataclass(frozen=True)
class Marker:
    """A cue: it counts when every one of its parts matches somewhere in the text.

    Parts are RE2 (case-insensitive, multiline) without an unbounded gap such as
    `[^\\n]*` or `.*`: in one Set, each such gap multiplies the states the DFA must
    build on a hostile text (random 64 KB: 3.4 ms per pass with them, 0.2 ms without),
    so "if ... then" is two parts that must both match instead.
    """

    group: str  # a task type, or a complexity signal
    weight: float
    parts: tuple[str, ...]


def _markers(group: str, *weighted: tuple[float, str | tuple[str, ...]]) -> tuple[Marker, ...]:
    return tuple(
        Marker(group, weight, (parts,) if isinstance(parts, str) else parts)
        for weight, parts in weighted
    )


_LANGUAGES = (
    "english|french|spanish|german|italian|portuguese|chinese|mandarin|cantonese|japanese|"
    "korean|russian|arabic|hindi|dutch|swedish|norwegian|danish|finnish|polish|czech|"
    "turkish|greek|hebrew|latin|vietnamese|thai|indonesian|ukrainian|persian|bengali"
)
_DOCUMENT = (
    r"(following|above|below|attached|given|this) (text|passage|document|article|email|"
    r"paragraph|report|transcript|thread|chapter|essay|notes|conversation|story|data|table)"
)

TASK_MARKERS: tuple[Marker, ...] = (
    *_markers(
        "code",
        (2.0, r"```"),
        (2.0, r"\bdef\s+\w+\s*\("),
        (1.5, r"\bclass\s+\w+\s*[:({]"),
        (2.0, r"^\s*import\s+[\w.]+|^\s*from\s+[\w.]+\s+import\b"),
        (2.0, r"#include\s*<"),
        (2.0, r"\bfunction\s*\w*\s*\(|=>\s*\{"),
        (1.0, r"[{};]\s*$"),
        (
            1.0,
            r"\b(python|javascript|typescript|golang|rust|java|kotlin|swift|ruby|php|sql|"
            r"bash|powershell|regex|html|css|json schema|dockerfile|kubernetes)\b|\bc\+\+|\bc#",
        ),
        (
            1.0,
            r"\b(code|coding|program|script|function|method|compiler?|debug(ging)?|"
            r"stack ?trace|traceback|refactor|unit tests?|bug|exception|segfault|api|"
            r"endpoint|repository|git)\b",
        ),
        (1.5, r"\b\w*(Error|Exception):|\bundefined is not\b|\bnull pointer\b"),
    ),
    *_markers(
        "math",
        (1.0, r"\d+(\.\d+)?\s*[+*/×÷^=]\s*\(?-?\d+|\d+\s+-\s+\d+"),
        (
            1.5,
            r"\b(equations?|integral|derivative|differentiate|integrate|polynomial|logarithm|"
            r"matrix|matrices|eigen\w*|vectors?|calculus|algebra|geometry|trigonometry|"
            r"probability|statistics|variance|theorem|lemma|primes?|prime numbers?|factorial|"
            r"fractions?|sqrt|square root|quadratic|modulo|arithmetic|divisible)\b",
        ),
        (
            1.0,
            r"\b(solve|calculate|compute|simplify|how many|what is the (value|probability|sum|"
            r"product|area|volume|perimeter|average|mean))\b",
        ),
        (2.0, r"\\(frac|sqrt|int|sum|cdot|times|alpha|beta|theta|pi|leq|geq)\b"),
        (
            1.5,
            r"\b[xyzn]\s*[=<>≤≥]\s*[-\d(]|\b\d+[xyzn]\s*[-+=<>]|\bf\s*\(\s*x\s*\)|"
            r"[a-z0-9)]\s*\^\s*\d",
        ),
        (
            0.5,
            r"\d\s*%|\b\d+(\.\d+)?\s*(percent|km|kg|miles?|meters?|dollars|hours?|minutes?)\b",
        ),
    ),
    *_markers(
        "translation",
        (3.0, r"\b(translate[sd]?|translation|translating|traduc\w*|übersetz\w*)\b"),
        (1.0, rf"\b(in|into|to|from) ({_LANGUAGES})\b"),
        (2.0, r"\bhow (do|would|can) (you|i|we) say\b"),
        (0.5, (r"\bwhat does\b", r"\bmean\b")),
    ),
    *_markers(
        "summarisation",
        (3.0, r"\b(summari[sz]e[sd]?|summari[sz]ing|summari[sz]ation|summary|summaries|tl;?dr)\b"),
        (
            1.5,
            r"\b(condense|shorten|boil (it )?down|in a nutshell|the gist|key (points|takeaways)|"
            r"main (points|ideas)|brief overview|recap|synopsis|in (one|two|three|a few|\d+) "
            r"(sentences?|lines|bullet points|bullets|words))\b",
        ),
        (0.5, rf"\b(the|this) {_DOCUMENT}\b"),
    ),
    *_markers(
        "extraction",
        (2.0, r"\b(extract|pull out|parse|identify all|find all|list all|list every|get all)\b"),
        (1.5, r"\b(in|as|to|into) (json|csv|yaml|xml|a table|tabular)( format)?\b"),
        (1.0, rf"\b(from|in) the {_DOCUMENT}\b"),
        (1.0, r"\b(named entit(y|ies)|entities|key-?value pairs?|fields|attributes)\b"),
        (1.0, r"\b(classify|categori[sz]e|label|sentiment)\b"),
        (0.5, r"\b(email addresses|phone numbers|dates|names|amounts|prices)\b"),
    ),
    *_markers(
        "creative",
        (
            2.5,
            (
                r"\b(write|compose|create|draft|come up with|make up|tell)\b",
                r"\b(story|stories|poem|poetry|haiku|limerick|sonnet|song|lyrics|verse|rap|"
                r"screenplay|fable|fairy tale|tale|novel|joke|dialogue|monologue|slogan|"
                r"tagline|toast)\b",
            ),
        ),
        (
            1.5,
            r"\b(story|poem|poetry|haiku|limerick|sonnet|lyrics|fiction(al)?|fantasy|sci-?fi|"
            r"once upon a time|protagonist|villain|plot twist|rhymes?)\b",
        ),
        (1.0, r"\b(imagine|pretend|role-?play|in the style of|creative(ly)?|brainstorm|invent)\b"),
    ),
    *_markers(
        "reasoning",
        (1.0, r"\bstep[- ]by[- ]step\b"),
        (1.0, r"\bwhy\b"),
        (
            1.5,
            r"\b(explain (why|how)|reasoning|logic(al)?|deduce|infer|inference|implications?|"
            r"conclude|conclusion|argument|premises?|fallacy|syllogism)\b",
        ),
        (2.0, r"\b(puzzle|riddle|brain ?teaser|paradox|dilemma)\b"),
        (
            1.0,
            r"\b(pros and cons|trade-?offs?|compare|comparison|contrast|versus|vs|which is better|"
            r"should i)\b",
        ),
        (1.0, (r"\bif\b", r"\bthen\b")),
        (
            1.0,
            r"\b(true or false|is it possible|what would happen|what happens if|suppose|assume|"
            r"hypothetical(ly)?)\b",
        ),
    ),
    *_markers(
        "chat",
        (2.0, r"^\s*(hi|hello|hey|hiya|howdy|greetings|good (morning|afternoon|evening)|yo)\b"),
        (1.5, r"\b(thanks|thank you|thx|cheers|bye|goodbye|see you)\b"),
        (
            2.0,
            r"\b(how are you|how's it going|what's up|who are you|what are you|your name|"
            r"tell me about yourself|nice to meet you)\b",
        ),
        (
            0.75,
            (
                r"^\s*(what|who|where|when|which|is|are|can|could|do|does|did|will|would|"
                r"tell me)\b",
                r"\?\s*$",
            ),
        ),
        (
            1.0,
            r"\b(i feel|i'm feeling|i am feeling|advice|recommend|suggestions?|your opinion|"
            r"what do you think)\b",
        ),
    ),
)

COMPLEXITY_MARKERS: tuple[Marker, ...] = (
    *_markers(
        "expert",
        (
            1.5,
            r"\b(prove|proof|theorem|lemma|corollary|rigorous(ly)?|formal(ly)?|asymptotic|"
            r"big-?o|np-?(hard|complete)|complexity class|derive|derivation)\b",
        ),
        (
            1.5,
            r"\b(distributed (systems?|consensus|transactions?)|consensus protocol|raft|paxos|"
            r"lock-?free|concurren(t|cy)|race conditions?|memory model|cache coherence|"
            r"type system|formal verification|byzantine)\b",
        ),
        (
            1.5,
            r"\b(differential equations?|eigen\w*|fourier|laplace|stochastic|bayesian|markov|"
            r"variational|tensors?|manifolds?|topology|quantum|thermodynamics|relativity|"
            r"econometrics?|cryptograph\w*)\b",
        ),
        (
            1.0,
            r"\b(state of the art|novel approach|research (paper|question|proposal)|"
            r"literature review|peer[- ]review|phd|graduate[- ]level|publishable)\b",
        ),
    ),
    *_markers(
        "steps",  # "step by step" is one of the rules' complex_patterns already
        (1.0, (r"\b(first|firstly)\b", r"\b(then|next|after that|finally)\b")),
        (0.5, r"\b(and then|as well as|in addition|additionally|also explain|for each|each of)\b"),
    ),
    *_markers(
        "constraints",
        (
            0.75,
            r"\b(must( not)?|should not|at least|at most|no more than|exactly|without using|"
            r"constraints?|requirements?)\b",
        ),
        (
            0.75,
            r"\b(edge cases?|handle (errors|all cases)|optimi[sz]e|efficient(ly)?|"
            r"time complexity|space complexity|scalab\w+|production[- ]ready)\b",
        ),
    ),
    *_markers(
        "brevity",
        (
            1.0,
            r"\b(briefly|in one (word|sentence)|one word|yes or no|short answer|quick question|"
            r"just tell me)\b",
        ),
        (0.5, r"\b(simple|basic|eli5|for a child|for beginners)\b"),
    ),
)
