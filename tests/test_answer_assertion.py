"""The maths reward pays only an answer the completion asserts: denied, questioned, doubted or hedged answers earn 0.

Every form a policy could use to name the reference without asserting it is kept here as a case, with the plain forms
that must keep earning 1.0 and the forms the rule deliberately leaves paying.
"""

from __future__ import annotations

import pytest

from resrl_trl.answer_parsing import is_asserted, score_answer
from resrl_trl.rewards import math_reward

# (completion, reference): the reference is read as the final answer, but the completion does not assert it
DENIED = [
    # negation and denial before the answer
    ("It is not 7", "7"),
    ("not 7", "7"),
    ("The answer is NOT 7", "7"),
    ("The answer is 8, not 7", "7"),
    ("It isn't 7.", "7"),
    ("It isn’t 7.", "7"),
    ("The answer isnt 7", "7"),
    ("It can't be 7", "7"),
    ("The answer cannot be 7.", "7"),
    ("The answer would not be 7", "7"),
    ("It is never 7.", "7"),
    ("Neither 8 nor 7", "7"),
    ("6 + 1 is not equal to 7", "7"),
    ("It does not equal 7", "7"),
    ("6 + 1 doesn't give 7", "7"),
    ("It doesn't seem to be 7", "7"),
    ("The answer is not obviously 7", "7"),
    ("It is not true that 6 + 1 = 7.", "7"),
    ("It is not the case that 6 + 1 = 7", "7"),
    ("The answer is 8 rather than 7", "7"),
    ("Use 8 instead of 7", "7"),
    ("It is other than 7", "7"),
    ("It is less than 7", "7"),
    ("It differs from 7", "7"),
    ("It is far from 7", "7"),
    ("anything but 7", "7"),
    ("We rule out 7", "7"),
    ("The wrong answer is 7", "7"),
    ("I wouldn't say 7", "7"),
    ("I don't think it's 7", "7"),
    # a negation separated from the answer by punctuation only
    ("The answer is not: 7", "7"),
    ("The answer is not\n7", "7"),
    ("Wrong: 7", "7"),
    ("Answer: not 7", "7"),
    ("**Answer:** not **7**", "7"),
    ("The answer is (not) 7", "7"),
    ("<answer>not 7</answer>", "7"),
    (r"\text{not } 7", "7"),
    # relations that exclude equality, plus-or-minus, rejection marks
    ("6 + 1 ≠ 7", "7"),
    ("6 + 1 != 7", "7"),
    ("6 + 1 =/= 7", "7"),
    ("6 + 1 <> 7", "7"),
    (r"6 + 1 \neq 7", "7"),
    (r"$6+1 \neq 7$", "7"),
    (r"$6+1 \ne 7$", "7"),
    (r"$6 + 1 \neq \boxed{7}$", "7"),
    ("x < 7", "7"),
    ("x > 7", "7"),
    ("x = ±7", "7"),
    ("¬7", "7"),
    ("❌ 7", "7"),
    ("7 ✗", "7"),
    # denial after the answer
    ("7 is incorrect.", "7"),
    ("7 is wrong", "7"),
    ("7 is false.", "7"),
    ("Is 7 wrong", "7"),
    ("7 is not the answer.", "7"),
    ("7 is not right", "7"),
    ("7 doesn't work.", "7"),
    ("7 is unlikely", "7"),
    ("7, no.", "7"),
    ("The answer is 7 — wrong!", "7"),
    ("The answer is 7, which is wrong.", "7"),
    ("The answer is 7, but that's wrong.", "7"),
    (r"\boxed{7} is wrong", "7"),
    (r"\boxed{7} (wrong)", "7"),
    (r"Final answer: $\boxed{7}$ is incorrect.", "7"),
    (r"the answer is not $7$", "7"),
    (r"The answer is not \boxed{7}", "7"),
    # questions
    ("Is it 7?", "7"),
    ("7?", "7"),
    ("$7$?", "7"),
    (r"\boxed{7}?", "7"),
    ("It is 7, isn't it?", "7"),
    ("It's 7, right?", "7"),
    ("Could the answer be 7?", "7"),
    ("What about 7?", "7"),
    ("How about 7", "7"),
    ("7? No.", "7"),
    ("7... or is it?", "7"),
    ("Is the answer 7?\n", "7"),
    ("Is it 7", "7"),
    ("So is the answer 7", "7"),
    ("Does 6 + 1 equal 7", "7"),
    # doubt and supposition
    ("Maybe 7", "7"),
    ("maybe 7.", "7"),
    ("Maybe: 7", "7"),
    ("Perhaps 7.", "7"),
    ("Probably 7.", "7"),
    ("It might be 7.", "7"),
    ("It could be 7", "7"),
    ("Could be 7", "7"),
    ("My guess is 7.", "7"),
    ("7 is my guess", "7"),
    ("7, I guess", "7"),
    ("7, maybe.", "7"),
    ("7-ish", "7"),
    ("The answer is 7 (not sure).", "7"),
    ("Not sure, maybe 7", "7"),
    ("I'm not sure: 7", "7"),
    ("I don't know, 7.", "7"),
    ("No way it's 7", "7"),
    ("If the answer is 7, we are done", "7"),
    ("Suppose x = 7.", "7"),
    # hedging between several answers
    ("7 or 8", "8"),
    ("8 or 7", "7"),
    ("either 8 or 7", "7"),
    ("6 + 1 = 7 or 8", "8"),
    ("x = 2 or x = 7", "7"),
    ("7 or so.", "7"),
    ("7 (or 8)", "8"),
    (r"The answer is \boxed{7}, or maybe 8.", "7"),
    ("Answer: $7$ (or $8$)", "7"),
    # the LaTeX answer located is the one math-verify reads: it skips the empty box and reads "$7$" after "answer"
    (r"The answer is not $7$. \boxed{}", "7"),
    (r"\boxed{7} is right. \boxed{7} is wrong", "7"),
]

# (completion, reference): asserted answers, which keep earning 1.0
ASSERTED = [
    ("6 + 1 = 7", "7"),
    ("The answer is 7.", "7"),
    (r"\boxed{7}", "7"),
    ("7", "7"),
    ("equals 7", "7"),
    ("7 + 5 = 12", "12"),
    ("The answer is 12.", "12"),
    ("The answer is 7!", "7"),
    ("The answer is definitely 7.", "7"),
    ("It must be 7.", "7"),
    ("So the answer would be 7.", "7"),
    ("I think the answer is 7.", "7"),
    ("#### 7", "7"),
    ("**Answer:** 7", "7"),
    ("Final answer:\n7", "7"),
    ("<answer>7</answer>", "7"),
    ("6 + 1 -> 7", "7"),
    ("6+1 => 7", "7"),
    ("1,000 + 6 = 1,006", "1006"),
    ("x is 0.5", r"\frac12"),
    ("The answer is 7. I hope it is correct.", "7"),
    (r"The final answer is $\boxed{7}$. I hope it is correct.", "7"),
    (r"The answer is $\frac{14}{2}$.", "7"),
    # a negation, doubt or question elsewhere, not bearing on the answer
    ("It is not hard: 6 + 1 = 7.", "7"),
    ("It is not hard, 6 + 1 = 7.", "7"),
    ("It is not hard to see that 6 + 1 = 7.", "7"),
    ("It's not 8, it's 7.", "7"),
    ("It is not 8 but 7.", "7"),
    ("It is not 8; it is 7.", "7"),
    ("No, 7.", "7"),
    ("Is it 8? No, it is 7.", "7"),
    ("What is 6 + 1? It is 7.", "7"),
    ("Is it hard? Not really. 6 + 1 = 7", "7"),
    ("Is it hard? Not\n6 + 1 = 7", "7"),
    ("8 is wrong, 7", "7"),
    (r"\boxed{7} is wrong, \boxed{7} is right", "7"),
    ("x ≠ 0, so x = 7", "7"),
    ("6 + 1 ≠ 8 = 7", "7"),
    ("Then is 7", "7"),
    ("We could compute 6 + 1 = 7.", "7"),
    ("If we add them, we get 7.", "7"),
    ("Either way, the answer is 7.", "7"),
    ("Whether or not x is even, the answer is 7", "7"),
    ("6 is not prime and 6 + 1 = 7", "7"),
    ("Not all numbers are prime, but 7 is.", "7"),
    ("The value that cannot be taken is 7.", "7"),
    ("The number of integers below 10 that are not divisible by 3 is 7.", "7"),
    ("The probability that Bob does not win is 7.", "7"),
    ("The largest multiple of 73 less than 1000 is 949.", "949"),
    ("There are no smaller primes than 2.", "2"),
    ("7 is not prime.", "7"),
    (r"\boxed{7}, not 8", "7"),
    ("It shares a factor with 120, but 7 does not.", "7"),
    ("7, I think", "7"),
    ("7...", "7"),
    ("5! = 120", "120"),
    ("$5!=120$", "120"),
    # "or" restating rather than offering an alternative
    ("It is 0.6, or 60 cents.", "60"),
    ("$x=1/5$, or 20 percent.", "20"),
    ("This gives 6^b = 36, or b = 2.", "2"),
    (r"$13+15$ or $\boxed{28}$", "28"),
    (r"$x = \frac{2401}{100},$ or $x = 24.01.$", "24.01"),
]

# Final sentences in the style of MATH reference solutions: all assert their answer
MATH_SOLUTIONS = [
    (r"Adding the factors other than $1$ gives $7 + 13 + 91 = \boxed{111}$.", "111"),
    (r"so $b+1=2016$ or $b=\boxed{2015}$ is the smallest value that works.", "2015"),
    (r"so there are $\boxed{4}$ real numbers not in the domain of $f$.", "4"),
    (r"so the largest multiple of 73 less than 1000 is $\boxed{949}$.", "949"),
    (r"Thus, at most $\boxed{3}$ colors may be used.", "3"),
    (r"for a total of $15 \times 14 \times 13 \times 12 = \boxed{32,\!760}$ different choices.", "32,760"),
    (r"The commission differs by $0.05(12) = 0.6$, or $\boxed{60}$ cents.", "60"),
    (r"Therefore, $CP$ is $\frac{2}{3}$ of $CN,$ or $\boxed{4}.$", "4"),
    (r"Thus, $d$ must equal $\frac{72}{6}$ or $\boxed{12}$.", "12"),
    (r"That means $BD=\frac{11}{2}$ or $\boxed{5.5}$.", "5.5"),
    (r"The probability is one in six or $\boxed{\frac{1}{6}}$.", r"\frac{1}{6}"),
    (r"which gives $2\cdot 5!=\boxed{240}$ possible arrangements.", "240"),
    (r"the greatest odd divisor of 5! is $5 \times 3 = \boxed{15}$.", "15"),
    (r"so the probability that Bob will not get all 0's is $1-\frac{1}{210}=\boxed{\frac{209}{210}}$.", "209/210"),
    (r"the probability that the sum exceeds the product is $\frac{4}{10}=\boxed{\frac{2}{5}}$.", r"\frac{2}{5}"),
    (r"Thus $B$, or the point $\boxed{(9,11)}$, is not on the line.", "(9,11)"),
    (r"so $J$ must be $\boxed{120}$ (or else $J$ would have more than 16 factors).", "120"),
    (r"the number of cases would be $\boxed{112,\!875}$ if the number decreased linearly.", "112,875"),
    (r"So $x = \left(\frac{49}{10}\right)^2 = \boxed{\frac{2401}{100}},$ or $x = 24.01.$", r"\frac{2401}{100}"),
    (r"Checking shows $2$ to $6$ share a prime factor with $120$, but $\boxed{7}$ does not.", "7"),
    (r"There are no smaller primes than $\boxed{2}$, so it is the smallest prime divisor.", "2"),
    (r"so no number other than $\boxed{8}$ can work.", "8"),
    (r"The largest possible area then is $\boxed{120}$ square centimeters.", "120"),
    (r"The decimal $0.4$, when expressed as a fraction, is $\frac{4}{10}=\boxed{\frac{2}{5}}.$", r"\frac{2}{5}"),
    (r"which is true if and only if $x\ge \frac{8+3}{2} = \boxed{\frac{11}{2}}$.", r"\frac{11}{2}"),
]

# Decisions of the rule, pinned: these keep paying 1.0
LEFT_PAYING = [
    ("x ≤ 7", "7"),  # a non-strict relation admits the answer ("at most 3 colors may be used")
    (r"x \geq 7", "7"),
    ("It is at most 7", "7"),
    ("It is at least 7", "7"),
    ("8, or 7", "7"),  # a comma before "or" reads as a restatement ("0.6, or 60 cents")
    ("x = 2, or x = 7", "7"),
    ("8 and 7", "7"),  # a list: only the last number is read, so listing gains nothing
    ("approximately 7", "7"),  # approximations
    ("≈ 7", "7"),
    ("It is 7 if x is positive.", "7"),  # a condition after the answer ("... if the number decreased linearly")
    ("The answer is 7. That is wrong.", "7"),  # only the answer's own sentence is read
]


@pytest.mark.parametrize(("text", "reference"), DENIED)
def test_denied_questioned_or_hedged_answers_earn_nothing(text: str, reference: str) -> None:
    answer, reward = score_answer(text, reference)
    assert answer == reference  # the reference is what was read: only the assertion check zeroes it
    assert reward == 0.0


@pytest.mark.parametrize(("text", "reference"), ASSERTED + MATH_SOLUTIONS + LEFT_PAYING)
def test_asserted_answers_keep_earning(text: str, reference: str) -> None:
    assert score_answer(text, reference)[1] == 1.0


def test_is_asserted_reads_the_answer_at_its_span() -> None:
    assert is_asserted("6 + 1 = 7", (8, 9))
    assert not is_asserted("6 + 1 ≠ 7", (8, 9))
    text = "It is 7, not 8"
    assert is_asserted(text, (6, 7))  # 7 is asserted, in contrast with 8
    assert not is_asserted(text, (13, 14))  # 8 is denied
    assert not is_asserted("Is it 7", (6, 7))
    assert is_asserted("It is 7", (6, 7))
    assert not is_asserted("Maybe 6 + 1 = 7", (14, 15))


def test_math_reward_worker_applies_the_rule() -> None:
    denied = ["6 + 1 ≠ 7", "The answer is 8, not 7", "It is not 7", "Is it 7?", r"\boxed{7} is wrong", "7 or 8"]
    asserted = ["6 + 1 = 7", "The answer is 7.", r"\boxed{7}", "It is not hard: 6 + 1 = 7."]
    solutions = ["7"] * 5 + ["8"] + ["7"] * 4
    assert math_reward(denied + asserted, solutions) == [0.0] * 6 + [1.0] * 4
    assert math_reward([[{"role": "assistant", "content": "Maybe 7?"}]], ["7"]) == [0.0]
