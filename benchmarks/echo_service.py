"""BentoML's floor: a do-nothing endpoint, served the same way as our Bento (for bench_overhead)."""

import bentoml


@bentoml.service(name="echo")
class Echo:
    @bentoml.api
    def echo(self, x: int) -> int:
        return x
