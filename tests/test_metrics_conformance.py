"""vlmnb's metrics against independent implementations that follow the official scorers step by step.

- VQA accuracy: the EvalAI answer processor (as lmms-eval's `vqa_eval_metric.py` has it, from MMF) and lmms-eval's
  `vqav2_process_results` loop over annotator dicts (leave-one-out by `item != gtAnsDatum`, as GT-Vision-Lab's
  `vqaEval.py` does).
- ANLS: the DocVQA / RRC evaluation script's per-question loop (lmms-eval's `anls` is the same).
- CER / WER: edit distances by dynamic programming, summed over the set and divided by the summed reference lengths
  (what jiwer computes on lists), with jiwer's default transforms (strip; runs of whitespace to one space, words split on spaces).

The reference code below is written for these tests from reading those scorers; it shares nothing with vlmnb.eval.
Each corpus has at least 200 cases, built from lists of tricky answers.
"""
import itertools, random, re

import pytest

from vlmnb.eval import anls, corpus_error_rate, vqa_accuracy, vqa_exact_match, vqa_normalise


# ---------------------------------------------------------------- VQA: the EvalAI processor, step by step
class RefVQAProcessor:
    contractions = {
        "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
        "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't", "dont": "don't",
        "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't", "havent": "haven't",
        "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd", "howll": "how'll",
        "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm", "Ive": "I've", "isnt": "isn't", "itd": "it'd",
        "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll", "let's": "let's", "maam": "ma'am", "mightnt": "mightn't",
        "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't",
        "mustve": "must've", "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't",
        "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've",
        "she'dve": "she'd've", "she's": "she's", "shouldve": "should've", "shouldnt": "shouldn't",
        "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd",
        "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've", "somebodyll": "somebody'll",
        "somebodys": "somebody's", "someoned": "someone'd", "someoned've": "someone'd've", "someone'dve": "someone'd've",
        "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
        "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's", "thered": "there'd",
        "thered've": "there'd've", "there'dve": "there'd've", "therere": "there're", "theres": "there's", "theyd": "they'd",
        "theyd've": "they'd've", "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've",
        "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't",
        "whatll": "what'll", "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's",
        "whered": "where'd", "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
        "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're",
        "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
        "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
        "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", "youd": "you'd",
        "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're", "youve": "you've"}
    number_map = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
                  "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
    articles = ["a", "an", "the"]
    period_strip = re.compile(r"(?!<=\d)(\.)(?!\d)")
    comma_strip = re.compile(r"(?<=\d)(\,)+(?=\d)")
    punctuations = [";", r"/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]

    def word_tokenize(self, word):
        word = word.lower()
        word = word.replace(",", "").replace("?", "").replace("'s", " 's")
        return word.strip()

    def process_punctuation(self, in_text):
        out_text = in_text
        for p in self.punctuations:
            if (p + " " in in_text or " " + p in in_text) or (re.search(self.comma_strip, in_text) is not None):
                out_text = out_text.replace(p, "")
            else:
                out_text = out_text.replace(p, " ")
        out_text = self.period_strip.sub("", out_text, re.UNICODE)
        return out_text

    def process_digit_article(self, in_text):
        out_text = []
        for word in in_text.lower().split():
            word = self.number_map.setdefault(word, word)
            if word not in self.articles:
                out_text.append(word)
        for word_id, word in enumerate(out_text):
            if word in self.contractions:
                out_text[word_id] = self.contractions[word]
        return " ".join(out_text)

    def __call__(self, item):
        item = self.word_tokenize(item)
        item = item.replace("\n", " ").replace("\t", " ").strip()
        item = self.process_punctuation(item)
        return self.process_digit_article(item)


def ref_vqa_accuracy(prediction, answers):
    "The per-question loop: annotator dicts carry an id, so `item != gtAnsDatum` leaves exactly that annotator out."
    proc = RefVQAProcessor()
    doc = [{"answer": a, "answer_id": k + 1} for k, a in enumerate(answers)]
    res_ans = proc(prediction)
    for ans_dic in doc:
        ans_dic["answer"] = ans_dic["answer"].replace("\n", " ").replace("\t", " ").strip()
    gt_answers = [ans["answer"] for ans in doc]
    if len(set(gt_answers)) > 1:
        for ans_dic in doc:
            ans_dic["answer"] = proc.process_punctuation(ans_dic["answer"])
            ans_dic["answer"] = proc.process_digit_article(ans_dic["answer"])
        res_ans = proc.process_punctuation(res_ans)
        res_ans = proc.process_digit_article(res_ans)
    gt_acc = []
    for gt_datum in doc:
        other = [item for item in doc if item != gt_datum]
        matching = [item for item in other if item["answer"] == res_ans]
        gt_acc.append(min(1, float(len(matching)) / 3))
    return sum(gt_acc) / len(gt_acc)


VQA_ANSWERS = [
    "two", "2", "Two.", "TWO", "ten", "10", "none", "0", "zero", "one hundred", "the cat", "a cat", "cat", "An apple", "apple",
    "dont", "don't", "Dont know", "whats", "what's", "well", "we'll", "were", "we're", "ill", "shell", "id", "im", "Im",
    "lets", "let's", "somebody'd", "somebodyd", "1,000", "1000", "1,000,000", "2.5", "2.5.", "3.", "yes", "yes!", "Yes.",
    "no", "no.", "black-and-white", "black and white", "black - white", "red, white", "red white", "(a) blue", "a blue",
    "blue?", "it's", "its", "it 's", "cat's toy", "50%", "$5", "5 dollars", "e.g. dog", "u.s.a.", "usa", "café", "Café",
    "naïve", "straße", "日本", "  spaced   out  ", "line\nbreak", "tab\tbed", "", " ", "...", "a.b.c", "x/y", "x / y",
    "[red]", "{red}", "red;", "@home", "`tick`", "hi_there", "<b>", "a+b", "a = b", "back\\slash", '"quoted"',
]


def _vqa_cases(n=400, seed=0):
    rng = random.Random(seed)
    cases = []
    for pred in VQA_ANSWERS:  # every answer against ten annotators who mostly agree with a variant of it
        pool = rng.sample(VQA_ANSWERS, 4) + [pred]
        cases.append((pred, [rng.choice(pool) for _ in range(10)]))
        cases.append((pred, [pred] * 10))  # all annotators agree: references are compared unprocessed
    while len(cases) < n:
        k = rng.choice([1, 2, 3, 4, 5, 10, 10, 10])
        pool = rng.sample(VQA_ANSWERS, rng.randint(1, 4))
        cases.append((rng.choice(VQA_ANSWERS + pool * 3), [rng.choice(pool) for _ in range(k)]))
    return cases


VQA_CASES = _vqa_cases()


def test_vqa_corpus_is_large_and_varied():
    assert len(VQA_CASES) >= 200
    scores = {round(ref_vqa_accuracy(p, r), 4) for p, r in VQA_CASES}
    assert {0.0, 1.0, 0.9} <= scores and len(scores) >= 6, scores  # the corpus reaches the formula's interesting values


@pytest.mark.parametrize("k", range(len(VQA_CASES)))
def test_vqa_accuracy_matches_reference(k):
    pred, refs = VQA_CASES[k]
    assert vqa_accuracy(pred, refs) == pytest.approx(ref_vqa_accuracy(pred, refs), abs=1e-12), (pred, refs)


@pytest.mark.parametrize("answer", VQA_ANSWERS)
def test_vqa_normalise_matches_processor(answer):
    assert vqa_normalise(answer) == RefVQAProcessor()(answer)


def test_vqa_known_values():
    refs = ["2"] * 3 + ["3"] * 7
    assert ref_vqa_accuracy("two", refs) == pytest.approx(0.9) == vqa_accuracy("two", refs)
    assert vqa_accuracy("three", refs) == 1.0 and vqa_accuracy("4", refs) == 0.0
    assert vqa_accuracy("x", ["x"]) == 0.0                     # one annotator: nobody is left to agree
    for word in ("well", "were", "ill", "shell", "id", "im", "lets"):
        assert vqa_normalise(word) == word                     # ordinary words stay as they are
    assert vqa_exact_match("Two.", ["2"]) == 1.0 and vqa_exact_match("three", ["2"]) == 0.0


# ---------------------------------------------------------------- ANLS: the DocVQA / RRC script's loop
def ref_levenshtein(s1, s2):
    if len(s1) > len(s2):
        s1, s2 = s2, s1
    distances = range(len(s1) + 1)
    for i2, c2 in enumerate(s2):
        distances_ = [i2 + 1]
        for i1, c1 in enumerate(s1):
            if c1 == c2:
                distances_.append(distances[i1])
            else:
                distances_.append(1 + min((distances[i1], distances[i1 + 1], distances_[-1])))
        distances = distances_
    return distances[-1]


def ref_anls(prediction, answers, threshold=0.5):
    values = []
    for answer in answers:
        gt_answer = " ".join(answer.strip().lower().split())
        det_answer = " ".join(prediction.strip().lower().split())
        dist = ref_levenshtein(gt_answer, det_answer)
        length = max(len(answer.upper()), len(prediction.upper()))
        values.append(0.0 if length == 0 else float(dist) / float(length))
    question_result = 1 - min(values)
    if question_result < threshold:
        question_result = 0
    return question_result


ANLS_STRINGS = ["4821", "4820", "48", "4", "4821 ", " 4821", "invoice", "Invoice", "INVOICE", "invoce", "in voice",
                "in  voice", "$1,234.56", "1234.56", "1,234.56", "12/03/2021", "12-03-2021", "ab", "abcd", "abcdef",
                "straße", "STRASSE", "strasse", "ﬁle", "file", "Ⅻ", "xii", "日本語", "日本", "", " ", "a\tb", "a b",
                "naïve", "naive", "The Cat", "the cat", "cat the", "0.5", "0,5"]


def _anls_cases():
    cases = [(p, [r]) for p, r in itertools.product(ANLS_STRINGS, ANLS_STRINGS[::3])]
    rng = random.Random(1)
    cases += [(rng.choice(ANLS_STRINGS), rng.sample(ANLS_STRINGS, rng.randint(2, 4))) for _ in range(120)]
    return cases


ANLS_CASES = _anls_cases()


def test_anls_corpus_is_large_and_reaches_the_boundary():
    assert len(ANLS_CASES) >= 200
    scores = [ref_anls(p, r) for p, r in ANLS_CASES]
    assert 0.5 in scores and 0.0 in scores and 1.0 in scores


@pytest.mark.parametrize("k", range(len(ANLS_CASES)))
def test_anls_matches_reference(k):
    pred, refs = ANLS_CASES[k]
    assert anls(pred, refs) == pytest.approx(ref_anls(pred, refs), abs=1e-12), (pred, refs)


def test_anls_known_values():
    assert anls("ab", ["abcd"]) == 0.5                       # distance exactly 0.5 of the length: kept
    assert anls("a", ["abcd"]) == 0.0
    assert anls("straße", ["strasse"]) == pytest.approx(ref_anls("straße", ["strasse"]))  # .upper() lengthens ß


# ---------------------------------------------------------------- CER / WER over a set
def ref_corpus_rate(predictions, references, unit):
    # jiwer's default transforms: characters of the stripped text; words after runs of 2+ whitespace become one space,
    # split on single spaces (a lone newline stays inside a word)
    split = (lambda s: list(s.strip())) if unit == "char" else (lambda s: [w for w in re.sub(r"\s\s+", " ", s).strip().split(" ") if w])
    edits = sum(ref_levenshtein(split(r), split(p)) for p, r in zip(predictions, references))
    return edits / sum(len(split(r)) for r in references)


TEXTS = ["the red cat", "the big cat", "a red cat sat", "", "cat", "the  red   cat", " the red cat ", "THE RED CAT",
         "ocr text 123", "ocr txet 123", "0cr text l23", "naïve café", "naive cafe", "日本語のテキスト", "日本語テキスト",
         "one two three four five", "one three five", "x", "xx xx", "line\nbreak here"]


def _rate_cases(n=240, seed=2):
    rng = random.Random(seed)
    cases = []
    while len(cases) < n:
        k = rng.randint(1, 5)
        refs = [rng.choice(TEXTS) for _ in range(k)]
        if not any(r.strip() for r in refs): continue  # a set with no reference text has no rate
        cases.append(([rng.choice(TEXTS) for _ in range(k)], refs))
    return cases


RATE_CASES = _rate_cases()


@pytest.mark.parametrize("unit", ["char", "word"])
def test_corpus_rates_match_reference(unit):
    assert len(RATE_CASES) >= 200
    for preds, refs in RATE_CASES:
        assert corpus_error_rate(preds, refs, unit) == pytest.approx(ref_corpus_rate(preds, refs, unit), abs=1e-12), (preds, refs)


def test_corpus_rate_is_not_the_mean_of_rates():
    preds, refs = ["the red cat", "b"], ["the red cat sat on the mat", "a"]
    per_sample = (4 / 7 + 1) / 2  # 0.79: the one-word answer weighs as much as the seven-word one
    assert corpus_error_rate(preds, refs, "word") == pytest.approx(5 / 8)
    assert abs(corpus_error_rate(preds, refs, "word") - per_sample) > 0.1
