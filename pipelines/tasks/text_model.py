"""fastai's AWD-LSTM text classifier rewritten for export, with `learn.predict`'s one-text semantics.

fastai's `SentenceEncoder` loops over 72-token chunks carrying the LSTM state, slices the batch by a
data-dependent count and keeps only the last `max_len` tokens' outputs; the pooling indexes the last
token with `out[arange(bs), -last_lens-1]`. None of that exports faithfully (the dynamo exporter fails,
the TorchScript exporter bakes in the trace length and batch size). Here each LSTM layer runs over the
whole sequence at once from a zero state (identical to carrying the state chunk by chunk), using the
same weights (the recurrent one from `weight_hh_l0_raw`, where fastai's weight dropout keeps it), and
pooling uses masks and `gather` over each row's own window.

Rows are padded on the right and their true lengths passed in, so every row of a batch gets exactly
what `learn.predict` gives that text alone. (fastai's own batched output differs: with its left padding
the pooling picks the wrong last token when the padded length is not a multiple of 72.)
"""

import torch
from torch import nn


class ExportableTextClassifier(nn.Module):
    def __init__(self, classifier, bptt: int, max_len: int | None):
        super().__init__()
        encoder = classifier[0].module  # SequentialRNN(SentenceEncoder(AWD_LSTM), PoolingLinearClassifier)
        self.embedding = nn.Embedding.from_pretrained(encoder.encoder.weight.detach().clone(), freeze=True)
        self.lstms = nn.ModuleList()
        for dropped in encoder.rnns:
            source = dropped.module
            lstm = nn.LSTM(source.input_size, source.hidden_size, 1, batch_first=True)
            with torch.no_grad():
                lstm.weight_ih_l0.copy_(source.weight_ih_l0)
                lstm.weight_hh_l0.copy_(dropped.weight_hh_l0_raw)
                lstm.bias_ih_l0.copy_(source.bias_ih_l0)
                lstm.bias_hh_l0.copy_(source.bias_hh_l0)
            self.lstms.append(lstm)
        self.head = classifier[1].layers
        self.bptt, self.max_len = bptt, max_len

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        output = self.embedding(tokens)
        for lstm in self.lstms:
            output, _ = lstm(output)
        positions = torch.arange(tokens.shape[1], device=tokens.device)[None, :]
        lengths = lengths[:, None]
        # fastai keeps the outputs of the chunks that start at a multiple of bptt within max_len of the end
        # (of every chunk where max_len is None).
        if self.max_len is None:
            keep = positions < lengths
        else:
            excess = torch.clamp(lengths - self.max_len, min=0)
            start = torch.div(excess + self.bptt - 1, self.bptt, rounding_mode="floor") * self.bptt
            keep = (positions >= start) & (positions < lengths)
        kept = keep[:, :, None]
        average = (output * kept).sum(dim=1) / keep.sum(dim=1, keepdim=True).to(output.dtype)
        maximum = output.masked_fill(~kept, float("-inf")).max(dim=1).values
        last_index = (lengths - 1)[:, :, None].expand(-1, 1, output.shape[-1])
        last = output.gather(1, last_index).squeeze(1)
        return self.head(torch.cat([last, maximum, average], dim=1))
