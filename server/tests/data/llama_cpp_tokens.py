"""Writes small vocabulary-only GGUF files and llama.cpp's tokenization of hard strings with them.

Not run by the tests (they read tokenizer-bpe.gguf, tokenizer-spm.gguf and the two
llama_cpp_*tokens.json); rerun it to add a pre-tokenizer or a case:

    python server/tests/data/llama_cpp_tokens.py

One byte-level BPE vocabulary (trained here with Hugging Face `tokenizers` on botchan-dev.txt
and the cases, 2000 entries, three control tokens) is written once per `tokenizer.ggml.pre`
value (the test does the same), since the pre-tokenizer's split is what differs between model
families. It is trained
on unsplit lines, so that its merges cross the boundaries some splits draw (digit runs, spaces
before words, contractions) and each family's split shows in the ids. A SentencePiece BPE vocabulary (`tokenizer.ggml.model = llama`, what Llama 2, Mistral and
TinyLlama files carry: pieces, scores, byte-fallback tokens) is trained likewise with the
`sentencepiece` package (800 pieces) and written once. Needs `tokenizers`, `sentencepiece`,
`gguf` and llama-cpp-python built from source (shared/REFERENCE.md), outside the repository.
"""

import json
import tempfile
from pathlib import Path

import gguf
import llama_cpp
import sentencepiece as spm
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

HERE = Path(__file__).parent
TEXT = HERE.parents[2] / ".." / "shared" / "data" / "botchan-dev.txt"
PRE_TOKENIZERS = ["qwen2", "llama-bpe", "smollm", "dbrx", "gpt-4o", "tekken"]
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CASES = [
    "Hello, world!",
    "The year 1906: 12345 yen, 3.14 and 007.",
    "I'LL go; you'Re sure? We'VE don't, it's O'Neil's.",
    "  two leading spaces\tand a tab\nnewline\r\nCRLF\n\n\nthree",
    "trailing spaces   ",
    "naïve café — 東京 🚀 Ünïcödé",
    "punctuation!!! ... ??? (nested [brackets]) {x: 1}",
    "<|im_start|>user\nhi 42<|im_end|>\n",
    "snake_case and camelCase and 2nd3rd4th",
    '"Oh, it\'s you," said he. "Yes," I said; (nested) "quotes" and \'single\' ones.',
    "IT'S HIS, ISN'T IT? THEY'D SAY WE'LL GO.",
    "\u00a0non-breaking\u2009thin space\u3000ideographic",
    "XMLHttpRequest.getElementById(toUpperCase) McDonaldsIPhone",
]


def train() -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=2000,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    lines = TEXT.read_text().splitlines() + CASES * 20
    tok.train_from_iterator(lines, trainer)
    return tok


def vocabulary_only_writer(path: Path, arch: str, rms_eps: float) -> gguf.GGUFWriter:
    """A writer with the architecture's keys llama.cpp reads even for a vocabulary-only load."""
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(1)
    w.add_context_length(256)
    w.add_embedding_length(64)
    w.add_feed_forward_length(128)
    w.add_head_count(4)
    w.add_head_count_kv(4)
    w.add_layer_norm_rms_eps(rms_eps)
    return w


def write_gguf(path: Path, pre: str, tok: Tokenizer) -> None:
    spec = json.loads(tok.to_str())
    vocab = sorted(spec["model"]["vocab"].items(), key=lambda kv: kv[1])
    tokens = [t for t, _ in vocab]
    assert [i for _, i in vocab] == list(range(len(tokens)))
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    w = vocabulary_only_writer(path, "qwen2", 1e-6)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types([3 if t in SPECIAL else 1 for t in tokens])
    w.add_token_merges(merges)
    w.add_bos_token_id(tokens.index("<|endoftext|>"))
    w.add_eos_token_id(tokens.index("<|im_end|>"))
    w.add_add_bos_token(False)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


# SentencePiece's piece types → llama.cpp's token types (normal, unknown, control, byte).
SPM_TYPES = {"NORMAL": 1, "UNKNOWN": 2, "CONTROL": 3, "USER_DEFINED": 4, "BYTE": 6}


def write_spm_gguf(path: Path, tmp: Path) -> None:
    lines = tmp / "lines.txt"
    lines.write_text("\n".join(TEXT.read_text().splitlines() + CASES * 20))
    spm.SentencePieceTrainer.train(
        input=str(lines),
        model_prefix=str(tmp / "spm"),
        model_type="bpe",
        vocab_size=800,
        byte_fallback=True,
        character_coverage=0.9995,
        split_digits=True,
        user_defined_symbols=["<|im_start|>", "<|im_end|>"],
        minloglevel=2,
    )
    sp = spm.SentencePieceProcessor(model_file=str(tmp / "spm.model"))
    pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
    kinds = []
    for i in range(len(pieces)):
        kind = "NORMAL"
        if sp.is_unknown(i):
            kind = "UNKNOWN"
        elif sp.is_control(i):
            kind = "CONTROL"
        elif sp.is_byte(i):
            kind = "BYTE"
        elif pieces[i] in ("<|im_start|>", "<|im_end|>"):
            kind = "USER_DEFINED"
        kinds.append(SPM_TYPES[kind])
    w = vocabulary_only_writer(path, "llama", 1e-5)
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(pieces)
    w.add_token_scores([sp.get_score(i) for i in range(len(pieces))])
    w.add_token_types(kinds)
    w.add_unk_token_id(sp.unk_id())
    w.add_bos_token_id(sp.bos_id())
    w.add_eos_token_id(sp.eos_id())
    w.add_add_bos_token(True)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def spm_cases() -> None:
    path = HERE / "tokenizer-spm.gguf"
    with tempfile.TemporaryDirectory() as tmp:
        write_spm_gguf(path, Path(tmp))
    llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    texts = CASES + ["<s>[INST] hi [/INST]", "", " ", "a\n\n b", "<|im_start|>x<|im_end|>y"]
    cases = [
        {
            "text": text,
            "ids": llm.tokenize(text.encode(), add_bos=False, special=True),
            "ids_with_bos": llm.tokenize(text.encode(), add_bos=True, special=True),
        }
        for text in texts
    ]
    dest = HERE / "llama_cpp_spm_tokens.json"
    dest.write_text(json.dumps(cases, ensure_ascii=False, indent=1) + "\n")
    print(f"wrote {dest} and {path.name}")


def main() -> None:
    tok = train()
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for pre in PRE_TOKENIZERS:
            path = Path(tmp) / f"tokenizer-{pre}.gguf"
            write_gguf(path, pre, tok)
            llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
            cases = [
                {"text": text, "ids": llm.tokenize(text.encode(), add_bos=False, special=True)}
                for text in CASES
            ]
            out.append({"pre": pre, "cases": cases})
    # The repository keeps one copy; the test rewrites `tokenizer.ggml.pre` for the others.
    write_gguf(HERE / "tokenizer-bpe.gguf", PRE_TOKENIZERS[0], tok)
    dest = HERE / "llama_cpp_tokens.json"
    dest.write_text(json.dumps(out, ensure_ascii=False, indent=1) + "\n")
    print(f"wrote {dest} and tokenizer-bpe.gguf (llama-cpp-python {llama_cpp.__version__})")
    spm_cases()


if __name__ == "__main__":
    main()
