"""Research tools on top of the engine and the metrics; the monitor never imports them.

==============  ===========================================================================
sanity          cascading model-parameter randomisation (Adebayo et al. 2018; §4.5)
surrogate       the bilinear surrogate model (Smooth Deep Saliency's first remedy)
layer_weights   data-driven layer weights for the combination: feature spread, probe accuracy
==============  ===========================================================================
"""
