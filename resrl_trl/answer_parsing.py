"""Reading a completion's final answer, checking that the completion asserts it, and comparing it with the reference.

:func:`score_answer` is what :class:`resrl_trl.rewards.MathReward` runs inside a bounded worker process
(:mod:`resrl_trl.answer_check`): a LaTeX answer (boxed first) when there is one, else the text's last number, is
compared with the reference by math-verify, and a match is paid only when :func:`is_asserted` finds that the text
asserts that answer rather than denying, doubting or questioning it.
"""

from __future__ import annotations

import re
import threading
from itertools import groupby

from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify
from math_verify.parser import NormalizationConfig, extract_match, get_extraction_regexes

__all__ = ["is_asserted", "score_answer"]

# LaTeX answers as TRL's accuracy_reward reads them: boxed first, only inside LaTeX anchors
LATEX_EXTRACTION = LatexExtractionConfig(
    normalization_config=NormalizationConfig(units=True), boxed_match_priority=0, try_extract_without_anchor=False
)
LAST_NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?(?:/\d+)?")

# math-verify's own regexes for LATEX_EXTRACTION, grouped by priority as its parser tries them: used to find *where*
# the answer it read stands in the text
LATEX_PATTERNS = [
    [pattern for pattern, _ in group]
    for _, group in groupby(
        sorted(
            (pair for patterns, _ in get_extraction_regexes([LATEX_EXTRACTION]) for pair in patterns),
            key=lambda pair: pair[1],
        ),
        key=lambda pair: pair[1],
    )
]

# --- What is_asserted reads. Words are compared in lower case, with ’ read as '.

# Tokens around an answer: markup tags (<answer>), LaTeX commands, operators of several characters, words (with their
# contractions), numbers (with a factorial sign that does not end the sentence: "5!=120", "5! is"), a line break, then
# any other single character; other white space separates tokens.
TOKEN = re.compile(
    r"</?[A-Za-z_][\w-]*>|\\[A-Za-z]+|<=>|=/=|!=|<>|<=|>=|==|:=|=>|->|[A-Za-z]+(?:['’][A-Za-z]+)*"
    r"|\d+(?:[.,]\d+)*(?:!(?![^\S\n]*(?:[A-Z\n]|$)))?|\n|\S"
)
WINDOW_CHARS = 1000  # read on each side of the answer at most: no linking chain is longer, and it bounds the work
SENTENCE_ENDS = {".", "!", "?", ";", "。", "！", "？", "；", "…"}
CLAUSE_MARKS = {",", ":", "—", "–", "\n", "，", "："}  # a line break counts as a clause mark
# The end of the answer's sentence, that mark included; an ellipsis or a decimal point ends nothing
SENTENCE_END = re.compile(r"[!?\n。！？]|(?<!\.)\.(?![\d.])")

# Words that link a marker and the answer without making a new statement: copulas, modal verbs, articles, pronouns,
# the nouns of "the final answer", "true" and "case" ("not the case that"), verbs of computing ("gives") and of
# opinion ("I think"); adverbs in -ly link too.
LINK_WORDS = {
    "is", "are", "was", "were", "am", "be", "been", "being", "it's", "that's", "there's", "here's", "i'm", "i'd",
    "do", "does", "did", "can", "will", "would", "shall", "should", "must", "to", "of", "equal", "equals", "equaled",
    "equalled", "equaling", "equalling", "the", "a", "an", "it", "its", "this", "that", "these", "those", "there",
    "here", "i", "my", "our", "your", "their", "we", "you", "they", "he", "she", "answer", "answers", "final",
    "result", "value", "values", "solution", "solutions", "total", "sum", "number", "product", "quotient",
    "difference", "correct", "right", "true", "case", "just", "even", "also", "all", "quite", "exactly", "still",
    "going", "gonna", "supposed", "give", "gives", "gave", "get", "gets", "got", "make", "makes", "made", "yield",
    "yields", "become", "becomes", "come", "comes", "amount", "amounts", "evaluate", "evaluates", "seem", "seems",
    "appear", "appears", "look", "looks", "like", "say", "think", "believe", "know",
}  # fmt: skip
AFTER_LINK_WORDS = LINK_WORDS | {"which", "but", "though", "although"}  # "7, which is wrong"; "7, but that's wrong"
OPERATORS = set("+-*/^×·÷") | {"\\cdot", "\\times", "\\div", "\\frac", "\\dfrac", "\\tfrac", "\\sqrt"}
TERM_SIGNS = set("$(){}[]\\")  # delimiters and brackets inside a term
ARITHMETIC = OPERATORS | set("_)}]")  # signs that make a variable part of a larger term ("6^b = 36")
NOT_VARIABLES = {"a", "i"}  # one-letter words
LATEX_LAYOUT = {"\\left", "\\right", "\\text", "\\textbf", "\\mathrm", "\\mathbf", "\\displaystyle", "\\boxed"}
LATEX_LAYOUT |= {"\\quad", "\\qquad"}  # LaTeX commands that make no term

# Negations: they deny the answer when they bear on it ("not 7", "6 + 1 isn't 7", "rather than 7", "7 is wrong")
_NOT_CONTRACTIONS = {
    f"{stem}{suffix}"
    for stem in ("is", "are", "was", "were", "do", "does", "did", "ca", "wo", "would", "could", "should", "must")
    + ("ai", "has", "have", "had", "need")
    for suffix in ("n't", "nt")
}
NEGATIONS = _NOT_CONTRACTIONS | {
    "not", "never", "nor", "neither", "cannot", "none", "nothing", "unequal", "wrong", "wrongly", "incorrect",
    "incorrectly", "false", "falsely", "untrue", "invalid", "impossible", "mistaken", "unlikely", "hardly", "barely",
    "scarcely", "fail", "fails", "failed", "except", "excluding", "exclude", "excludes", "excluded", "unlike",
    "instead", "reject", "rejects", "rejected", "exceed", "exceeds",
    "than",  # a strict comparison or a contrast: "less than 7", "other than 7", "rather than 7"
}  # fmt: skip
PREDICATES = {"wrong", "incorrect", "false", "untrue", "invalid", "impossible", "mistaken", "unlikely"}  # adjectives
NEGATION_PHRASES = {  # keyed by their last word: "apart from", "anything but", "rule out"
    "from": {"apart", "far", "aside", "away", "different", "differs", "differ"},
    "but": {"anything", "everything"},
    "out": {"rule", "rules", "ruled", "ruling"},
}
# Relations that exclude equality with the term after them, plus-or-minus (two answers) and marks of rejection.
# Non-strict ones (≤, ≥, "at most") admit the answer and link like =.
DENYING_RELATIONS = {"≠", "!=", "=/=", "<>", "≢", "<", ">", "≪", "≫", "¬", "±", "∓", "✗", "✘", "❌"}
DENYING_RELATIONS |= {"\\neq", "\\ne", "\\not", "\\nequiv", "\\lt", "\\gt", "\\nleq", "\\ngeq", "\\neg", "\\lnot"}
DENYING_RELATIONS |= {"\\pm", "\\mp"}
# What a negation bears on is the first term or content word after it, these words and adverbs in -ly skipped:
# "instead of 8", "cannot be 8", "not equal to 8", "doesn't give 8", "doesn't seem to be 8", "not obviously 8"
SCOPE_SKIP = {"of", "to", "be", "is", "are", "was", "were", "been", "equal", "equals", "the", "a", "an", "give"}
SCOPE_SKIP |= {"gives", "gave", "get", "gets", "got", "make", "makes", "made", "yield", "yields", "become", "becomes"}
SCOPE_SKIP |= {"come", "comes", "amount", "amounts", "evaluate", "evaluates", "seem", "seems", "appear", "appears"}
SCOPE_SKIP |= {"look", "looks", "like", "say"}
OPERAND = "#"  # what _scope returns for a term
# A negation denies the answer when it bears on nothing else ("not 7", "7 is wrong") or on its correctness ("It is not
# true that 6 + 1 = 7", "7 is not the answer"); on another content word it says something else ("the probability that
# Bob does not win is 7/8", "(9,11) is not on the line"), on another term it contrasts ("6 + 1 ≠ 8 = 7", "7, not 8").
CORRECTNESS = {
    "case", "correct", "right", "true", "valid", "accurate", "it", "answer", "answers", "solution", "result", "value",
    "so", "sure", "exactly", "quite", "possible", "likely", "allowed", "final", "good", "ok", "okay", "acceptable",
    "that", "this", "what", "know", "think", "believe", "work", "works", "hold", "holds", "fit", "fits", "check",
    "checks", "satisfy", "satisfies",
}  # fmt: skip
# A comparison under a negation admits equality or singles the answer out: "no more than 7", "no number other than 8"
NEGATED = {"not", "no", "none", "nothing", "never"} | _NOT_CONTRACTIONS
DO_AUXILIARIES = {"do", "does", "did", "don't", "doesn't", "didn't", "dont", "doesnt", "didnt"}  # "but 7 does not."

# Doubts: they deny the whole statement after them ("maybe 6 + 1 = 7", "I guess it is 7")
DOUBTS = {
    "maybe", "perhaps", "possibly", "probably", "likely", "presumably", "supposedly", "guess", "guessing", "guessed",
    "unsure", "uncertain", "might", "may", "could", "ish",
}  # fmt: skip
DOUBT_PHRASES = {  # keyed by their last word
    "way": {"no"},
    "about": {"what", "how"},
    "sure": {"not", "never"},
    "know": {"not", "don't", "dont", "didn't", "didnt"},
}
# Suppositions deny what follows them ("if the answer is 7"); after the answer they state a condition and are not read
# ("112,875 if the number of cases decreased linearly")
SUPPOSITIONS = {"if", "unless", "whether", "suppose", "supposing", "assume", "assuming", "hypothetically"}
# Alternatives: a hedge when the answer is one of two values ("8 or 7"), not when "or" restates ("0.6, or 60 cents")
ALTERNATIVES = {"or", "either"}
# Questions without a question mark: an auxiliary verb that opens the sentence ("Is it 7", "So, does 6 + 1 equal 7")
AUXILIARIES = {"is", "are", "was", "were", "am", "do", "does", "did", "can", "will", "would", "shall", "should"}
OPENERS = {"so", "and", "but", "then", "now", "well", "hmm", "wait", "ok", "okay", "oh", "also", "thus", "hence"}


def _word(token: str) -> str:
    return token.lower().replace("’", "'")


def _phrase(tokens: list[str], i: int, phrases: dict[str, set[str]]) -> bool:
    """Whether ``tokens[i]`` ends one of ``phrases`` (keyed by their last word)."""
    return i > 0 and _word(tokens[i - 1]) in phrases.get(_word(tokens[i]), ())


def _is_operand(token: str) -> bool:
    """A number, a variable or a LaTeX command that makes a term (\\frac, \\sqrt), as opposed to a word."""
    if token[0].isdigit():
        return True
    if token.startswith("\\"):
        return len(token) > 1 and token not in LATEX_LAYOUT and token not in DENYING_RELATIONS
    return len(token) == 1 and token.isalpha() and token.lower() not in NOT_VARIABLES


def _is_link(token: str, link_words: set[str]) -> bool:
    """Whether ``token`` can stand between a marker and the answer without breaking the tie between them."""
    word = _word(token)
    if word in link_words or _is_operand(token) or token.startswith(("\\", "<")):
        return True  # expressions ("It is not true that 6 + 1 = 7"), LaTeX and markup tags
    if token[0].isalpha():
        return word.endswith("ly") and word.isalpha()  # an adverb
    return token not in SENTENCE_ENDS and token not in CLAUSE_MARKS  # operators, brackets, delimiters, quotes


def _scope(tokens: list[str], start: int) -> str:
    """What the negation just before ``tokens[start]`` bears on: the first term or content word from there on.

    ``OPERAND`` for a number, variable or LaTeX term ("not 8", "than $1$", "instead of 8"), the lower-cased word for a
    content word ("not true that ...", "not the answer"), "" when there is neither (only the answer or the sentence's
    end comes).
    """
    for token in tokens[start:]:
        if _is_operand(token):
            return OPERAND
        word = _word(token)
        if token[0].isalpha() and word not in SCOPE_SKIP and not (word.endswith("ly") and word.isalpha()):
            return word
    return ""


def _denies(tokens: list[str], i: int) -> bool:
    """Whether the negation at ``tokens[i]`` denies the answer: it bears on nothing else, or on its correctness."""
    if _word(tokens[i]) == "than":
        for token in reversed(tokens[:i]):
            if token in CLAUSE_MARKS or token in SENTENCE_ENDS:
                break
            if _word(token) in NEGATED:
                return False
    scope = _scope(tokens, i + 1)
    return scope == "" or scope in CORRECTNESS


def _after_clause_mark(tokens: list[str], i: int) -> bool:
    """Whether a clause mark comes just before ``tokens[i]``, delimiters aside ("$CN,$ or")."""
    for token in reversed(tokens[:i]):
        if token not in TERM_SIGNS:
            return token in CLAUSE_MARKS
    return False


def _offers_alternative(tokens: list[str], i: int) -> bool:
    """Whether the "or" at ``tokens[i]``, before the answer, offers the answer as an alternative to another value.

    It does between two values ("8 or 7", "either 8 or 7", "(or $7$)") and between two values of one variable
    ("x = 2 or x = 7"). It restates after a comma ("0.6, or 60 cents", "x = 2401/100, or x = 24.01"), after an
    expression ("$13+15$ or $28$") and between two statements ("6^b = 36 or b = 2").
    """
    if _after_clause_mark(tokens, i):
        return False
    between = [t for t in tokens[i + 1 :] if t[0].isalnum() or t.startswith("\\") or t == "="]
    if not between:  # "A or <answer>": A is a single value, or an expression the answer evaluates
        term = []
        for token in reversed(tokens[:i]):
            if not (_is_operand(token) or token in OPERATORS or token in TERM_SIGNS):
                break
            term.append(token)
        operands = [j for j, token in enumerate(term) if _is_operand(token)]
        return bool(operands) and not any(token in OPERATORS for token in term[operands[0] : operands[-1] + 1])
    if len(between) != 2 or between[1] != "=" or not between[0].isalpha() or not _is_operand(between[0]):
        return False
    for j in range(i - 1, 0, -1):  # "<variable> = <answer>": the same variable given a value alone before
        if tokens[j] in SENTENCE_ENDS:
            break
        if tokens[j] == "=" and tokens[j - 1] == between[0]:
            return j < 2 or not (_is_operand(tokens[j - 2]) or tokens[j - 2] in ARITHMETIC)
    return False


def _closes_on_marker(tokens: list[str], i: int) -> bool:
    """Whether the clause that the mark at ``tokens[i]`` closes ends on a negation or doubt, which then bears on the
    answer right after the mark: "not, 7", "Maybe: 7", "(not sure): 7", "Wrong: 7" -- but not "8 is wrong, 7"."""
    j = i - 1
    while j >= 0 and not tokens[j][0].isalnum():  # "not**: 7"
        j -= 1
    if j < 0:
        return False
    word = _word(tokens[j])
    if word in DOUBTS or word in SUPPOSITIONS or _phrase(tokens, j, DOUBT_PHRASES):
        return True
    if word in PREDICATES:  # an adjective denies what it follows ("8 is wrong, 7") unless it opens its clause
        return j == 0 or tokens[j - 1] in SENTENCE_ENDS or tokens[j - 1] in CLAUSE_MARKS
    return word in NEGATIONS or _phrase(tokens, j, NEGATION_PHRASES)


def _asserted_before(tokens: list[str], at_text_start: bool) -> bool:
    """The check of the tokens before an answer, walking back from it; see :func:`is_asserted`."""
    words_seen = False  # a word or number between a clause mark and the answer ends the clause there
    head = len(tokens)  # the first token of the linked chain that ends at the answer
    i = len(tokens) - 1
    while i >= 0:
        token, word = tokens[i], _word(tokens[i])
        if token in DENYING_RELATIONS or word in NEGATIONS or _phrase(tokens, i, NEGATION_PHRASES):
            if _denies(tokens, i):
                return False
            break  # it bears on something else: "6 + 1 ≠ 8 = 7", "the largest multiple less than 1000 is 949"
        if word == "if" and i > 0 and _word(tokens[i - 1]) == "only":
            break  # "if and only if x = 7" states a condition that holds
        if word in DOUBTS or word in SUPPOSITIONS or _phrase(tokens, i, DOUBT_PHRASES):
            return False
        if word in ALTERNATIVES:
            if _offers_alternative(tokens, i):
                return False
            break
        if token in CLAUSE_MARKS and not words_seen:
            if _closes_on_marker(tokens, i):
                return False
            break
        if not _is_link(token, LINK_WORDS):
            break
        words_seen |= token[0].isalnum()
        head = i
        i -= 1
    # a question by inversion: the chain opens its sentence (or line) with an auxiliary verb, and a word or term stands
    # between that verb and the answer ("Is it 7", "So, does 6 + 1 equal 7"), unlike "but is 7"
    while i >= 0 and (tokens[i] == "," or _word(tokens[i]) in OPENERS):
        i -= 1
    opens = at_text_start if i < 0 else tokens[i] in SENTENCE_ENDS or tokens[i] == "\n"
    inverted = _word(tokens[head]) in AUXILIARIES if head < len(tokens) else False
    return not (opens and inverted and any(token[0].isalnum() for token in tokens[head + 1 :]))


def _asserted_after(tokens: list[str]) -> bool:
    """The check of the tokens after an answer up to its sentence's end, walking on; see :func:`is_asserted`."""
    if any(token in ("?", "？") for token in tokens):
        return False
    words_seen = False
    for i, token in enumerate(tokens):
        word = _word(token)
        if token in DENYING_RELATIONS or word in NEGATIONS or _phrase(tokens, i, NEGATION_PHRASES):
            if (word in DO_AUXILIARIES or (i > 0 and _word(tokens[i - 1]) in DO_AUXILIARIES)) and not any(
                t[0].isalnum() for t in tokens[i + 1 :]
            ):
                return True  # an elided verb: "6 shares a factor with 120, but 7 does not."
            return not _denies(tokens, i)  # "7 is not right" denies; "\\boxed{7}, not 8", "7 is not prime" do not
        if word in SUPPOSITIONS or (word in ALTERNATIVES and i + 1 < len(tokens) and _word(tokens[i + 1]) == "else"):
            return True  # a condition or "or else": "7 (or else J would have more factors)"
        if word in ALTERNATIVES and _after_clause_mark(tokens, i):
            continue  # a restatement: "x = 2401/100, or x = 24.01"
        if word in DOUBTS or word in ALTERNATIVES or _phrase(tokens, i, DOUBT_PHRASES):
            return False
        if word == "no" and not any(t[0].isalnum() for t in tokens[i + 1 :]):
            return False  # "7, no."
        if token in CLAUSE_MARKS and not words_seen:
            continue
        if not _is_link(token, AFTER_LINK_WORDS):
            return True
        words_seen |= token[0].isalnum()
    return True


def is_asserted(text: str, span: tuple[int, int]) -> bool:
    """Whether ``text`` asserts the answer at ``text[span[0]:span[1]]``, rather than denying, doubting or asking it.

    The check reads what *bears on* the answer: it walks away from the answer, back towards the start of its clause
    and on to the end of its sentence (. ! ? or a line break), over tokens that only link: copulas, modal verbs,
    articles, pronouns, "equal to", the nouns of "the final answer", verbs such as "gives" or "think", adverbs in -ly,
    and expressions (numbers, variables, operators, brackets, =, ≤, ≥, ≈, LaTeX, markup tags such as ``<answer>``).
    Any other word stops the walk, and so do a sentence end (. ! ? ;) and, before the answer, a clause mark (, : — –
    or a line break): "It's not 8, it's 7" asserts 7. Only when nothing but signs stands between the mark and the
    answer does a negation or doubt that closes the clause before the mark bear on the answer ("not, 7", "Maybe: 7",
    "Wrong: 7"; not "8 is wrong, 7"). After the answer, "which", "but" and "though" link too ("7, which is wrong"),
    and the walk crosses a clause mark that follows the answer directly. The answer is not asserted when the walk
    reaches

    * a negation bearing on the answer: "not", "never", "nor", -n't, "cannot", "wrong", "incorrect", "false",
      "impossible", "unlike", "except", "instead of", "different from", "anything but", any "than" ("less/other/
      rather than"), or a sign excluding equality (≠, !=, =/=, <>, ``\\neq``, ``\\ne``, ``\\not``, <, >, ±,
      ``\\pm``, ✗). It bears on the answer when the first term or content word after it (skipping "be", "equal to",
      "gives", adverbs in -ly, ...) is the answer itself, or a word of correctness such as "true", "the case",
      "correct", "the answer", "it", "sure", "work". On another term it contrasts ("6 + 1 ≠ 8 = 7", "the largest
      multiple of 73 less than 1000 is 949", "\\boxed{7}, not 8"); on another word it says something else ("the
      probability that Bob does not win is 7/8", "7 is not prime"); closing the sentence after "do" it stands for an
      elided verb ("6 shares a factor with 120, but 7 does not."); a negated comparison admits the answer ("no more
      than 7", "no number other than 8");
    * a doubt: "maybe", "perhaps", "probably", "possibly", "likely", "might", "may", "could", "guess", "-ish",
      "not sure", "don't know", "no way", "what/how about";
    * before the answer, a supposition: "if" (not "if and only if"), "unless", "whether", "suppose", "assume"; after
      the answer a supposition states a condition and ends the walk ("7 if the rate is constant");
    * "or"/"either" offering the answer as one of several values: "8 or 7", "7 or 8", "7 or so", "x = 2 or x = 7".
      "or" restates after a comma ("0.6, or 60 cents"), after an expression ("$13+15$ or $28$") and between two
      statements ("6^b = 36 or b = 2"); "or else" starts a new statement;
    * "no" closing the sentence ("7, no.").

    A question is no assertion either: a question mark after the answer in its sentence ("7?", "It is 7, isn't
    it?"), or a chain that opens its sentence with an auxiliary verb with a word or term between that verb and the
    answer ("Is it 7", "So, does 6 + 1 equal 7"; "..., but is 7" asserts). Words are compared case-insensitively;
    text beyond the answer's sentence, or more than :data:`WINDOW_CHARS` characters away from it, is not read.
    """
    start, end = span
    window_start = max(0, start - WINDOW_CHARS)
    if not _asserted_before(TOKEN.findall(text, window_start, start), at_text_start=window_start == 0):
        return False
    window_end = min(len(text), end + WINDOW_CHARS)
    stop = SENTENCE_END.search(text, end, window_end)
    return _asserted_after(TOKEN.findall(text, end, stop.end() if stop else window_end))


def _timeouts() -> tuple[int | None, int | None]:
    # math-verify's time-outs use signal.alarm, which works only in the main thread.
    if threading.current_thread() is threading.main_thread():
        return 10, 5
    return None, None


def _balanced_end(text: str, open_brace: int) -> int:
    """The index just past the brace group that opens at ``text[open_brace]`` (the text's end if it never closes)."""
    depth = 0
    for i in range(open_brace, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return i + 1
    return len(text)


def _latex_answer_span(text: str) -> tuple[int, int] | None:
    """Where the LaTeX answer that math-verify reads (:data:`LATEX_EXTRACTION`) stands in ``text``, or None.

    The same search as math-verify's parser: priority groups in order, and in each the matches ending rightmost
    first, until one parses. The span covers its LaTeX groups, narrowed to the last ``\\boxed{...}`` inside them when
    there is one (math-verify reads the last box).
    """
    for patterns in LATEX_PATTERNS:
        matches = sorted(
            (match for pattern in patterns for match in pattern.finditer(text)),
            key=lambda match: (match.end(), -match.start()),
            reverse=True,
        )
        for match in matches:
            if extract_match(match, LATEX_EXTRACTION)[0] is None:
                continue
            groups = [name for name, value in match.groupdict().items() if value is not None and "_latex" in name]
            start, end = min(match.start(name) for name in groups), max(match.end(name) for name in groups)
            boxed = text.rfind("\\boxed", start, end)
            if boxed >= 0 and (brace := text.find("{", boxed, end)) >= 0:
                return boxed, _balanced_end(text, brace)
            return start, end
    return None


def score_answer(text: str, reference: str) -> tuple[str, float | None]:
    """``(extracted final answer, reward)`` of one completion text against its reference answer.

    The final answer is a LaTeX answer (boxed first, else ``$...$`` after "answer"), else the text's last number. The
    reward is 1.0 when math-verify finds it equal to the reference and :func:`is_asserted` finds the text asserts it,
    else 0.0; ``None`` when the reference itself cannot be parsed. The answer is math-verify's reading of the
    completion ("" when it finds none), also when the text does not assert it.
    """
    parsing_timeout, verify_timeout = _timeouts()
    gold = parse(str(reference), parsing_timeout=parsing_timeout)
    if not gold:  # bare LaTeX such as "\\frac{\\sqrt{7}}{14}" or "[0,\\infty)" parses inside math delimiters
        gold = parse(f"${reference}$", parsing_timeout=parsing_timeout)
    if not gold:
        return "", None
    span: tuple[int, int] | None = None
    answer = parse(text, extraction_config=[LATEX_EXTRACTION], parsing_timeout=parsing_timeout)
    from_latex = bool(answer)
    if not answer:
        numbers = list(LAST_NUMBER.finditer(text))
        if numbers:
            span = numbers[-1].span()
            answer = parse(
                numbers[-1].group().replace(",", ""),
                extraction_config=[ExprExtractionConfig()],
                parsing_timeout=parsing_timeout,
            )
    extracted = str(answer[-1]) if answer else ""
    if not verify(gold, answer, timeout_seconds=verify_timeout):
        return extracted, 0.0
    if from_latex:  # located only for a correct answer: the search repeats math-verify's (cached) parsing
        span = _latex_answer_span(text)
    return extracted, float(is_asserted(text, span or (len(text), len(text))))  # not located: judge the text's end
