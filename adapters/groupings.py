"""Built-in class groupings: the sets of ``affinity:NAME`` / ``superclass:NAME`` guarantees.

CIFAR-10 vehicles vs animals, and CIFAR-100's 20 superclasses (its official coarse labels).
"""

from __future__ import annotations

__all__ = ["CIFAR100_COARSE", "CIFAR10_VEHICLES", "CIFAR10_ANIMALS", "CIFAR10_VEHICLES_ANIMALS", "GROUPINGS"]

#: ``CIFAR100_COARSE[c]``: the fine label indices of coarse class ``c`` (a partition of 0..99).
CIFAR100_COARSE: tuple[tuple[int, ...], ...] = (
    (4, 30, 55, 72, 95),    # aquatic_mammals: beaver, dolphin, otter, seal, whale
    (1, 32, 67, 73, 91),    # fish: aquarium_fish, flatfish, ray, shark, trout
    (54, 62, 70, 82, 92),   # flowers: orchid, poppy, rose, sunflower, tulip
    (9, 10, 16, 28, 61),    # food_containers: bottle, bowl, can, cup, plate
    (0, 51, 53, 57, 83),    # fruit_and_vegetables: apple, mushroom, orange, pear, sweet_pepper
    (22, 39, 40, 86, 87),   # household_electrical_devices: clock, keyboard, lamp, telephone, television
    (5, 20, 25, 84, 94),    # household_furniture: bed, chair, couch, table, wardrobe
    (6, 7, 14, 18, 24),     # insects: bee, beetle, butterfly, caterpillar, cockroach
    (3, 42, 43, 88, 97),    # large_carnivores: bear, leopard, lion, tiger, wolf
    (12, 17, 37, 68, 76),   # large_man-made_outdoor_things: bridge, castle, house, road, skyscraper
    (23, 33, 49, 60, 71),   # large_natural_outdoor_scenes: cloud, forest, mountain, plain, sea
    (15, 19, 21, 31, 38),   # large_omnivores_and_herbivores: camel, cattle, chimpanzee, elephant, kangaroo
    (34, 63, 64, 66, 75),   # medium_mammals: fox, porcupine, possum, raccoon, skunk
    (26, 45, 77, 79, 99),   # non-insect_invertebrates: crab, lobster, snail, spider, worm
    (2, 11, 35, 46, 98),    # people: baby, boy, girl, man, woman
    (27, 29, 44, 78, 93),   # reptiles: crocodile, dinosaur, lizard, snake, turtle
    (36, 50, 65, 74, 80),   # small_mammals: hamster, mouse, rabbit, shrew, squirrel
    (47, 52, 56, 59, 96),   # trees: maple_tree, oak_tree, palm_tree, pine_tree, willow_tree
    (8, 13, 48, 58, 90),    # vehicles_1: bicycle, bus, motorcycle, pickup_truck, train
    (41, 69, 81, 85, 89),   # vehicles_2: lawn_mower, rocket, streetcar, tank, tractor
)

#: CIFAR-10's standard coarse split: vehicles (airplane, automobile, ship, truck) and animals
CIFAR10_VEHICLES: tuple[int, ...] = (0, 1, 8, 9)
CIFAR10_ANIMALS: tuple[int, ...] = (2, 3, 4, 5, 6, 7)
CIFAR10_VEHICLES_ANIMALS: tuple[tuple[int, ...], ...] = (CIFAR10_VEHICLES, CIFAR10_ANIMALS)

#: built-in groupings by data set name, usable as ``affinity:NAME`` / ``superclass:NAME`` sets:
#: CIFAR-10 vehicles vs animals, CIFAR-100's 20 superclasses (its official coarse labels)
GROUPINGS: dict[str, tuple[tuple[int, ...], ...]] = {
    "cifar10": CIFAR10_VEHICLES_ANIMALS,
    "cifar100": CIFAR100_COARSE,
}
