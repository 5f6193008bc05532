from tortoise import BaseDBAsyncClient

RUN_IN_TRANSACTION = True


async def upgrade(db: BaseDBAsyncClient) -> str:
    return """
        ALTER TABLE "users" ADD "last_login_at" TIMESTAMPTZ;
        CREATE INDEX IF NOT EXISTS "idx_conversations_user_recent" ON "conversations" ("user_id", "updated_at");
        CREATE INDEX IF NOT EXISTS "idx_messages_conversation_created" ON "messages" ("conversation_id", "created_at");"""


async def downgrade(db: BaseDBAsyncClient) -> str:
    return """
        DROP INDEX IF EXISTS "idx_conversations_user_recent";
        DROP INDEX IF EXISTS "idx_messages_conversation_created";
        ALTER TABLE "users" DROP COLUMN "last_login_at";"""


MODELS_STATE = (
    "eJztXP9TozgU/1cYftqd8RyttbrOzc1URbe32jot3u3tecNESFtGCCyE1Y7n/35JgPIdAV"
    "sWOX5ZS5KXL5+XvLz3SbLPvG4oULN3zwz0A1o2wKqB+BPumUdAh+RHav4OxwPTDHJpAgb3"
    "GhOQQyVZDri3sQVkTDLnQLMhSVKgLVuq6TWGHE2jiYZMCqpoESQ5SP3uQAkbC4iX0CIZf/"
    "9DklWkwCdo089nfq5CTWG/eceGlqQqtFHHVACGigQwTyXgk2lB22Zd8irxB6gqT1KkzxKr"
    "xoIyRJiNbGWygjyrhwyFfbzQOswHiTUfQcztAEuXfNnb29H5BStJB3pPGtQcHQWlzRVeGm"
    "hd3HFUZZfK0LwFRNCigwkBSPHxAPeTXKxIArYcuAZJCRIUOAeORtXA/zp3kEwHy7GW6D/9"
    "37yuhYpJ0ngiSjNBlCS+hNYImlTjKsIU7OcXt94AEJbK0wbOPg+nHw4GHxkEho0XFstkcP"
    "EvTBBgIAUqDlDGKibDTwB9tgRWOtBrgRjWpKtVUPYTApiDyb0GcFuQ8jp4kjSIFnhJPnuH"
    "hzkY/zGcMphJKYazQdaiu1LHXlbPzaN4B/iChTf9i+K7FqgRX7dSrR6YB/0CKA/6mSDTrC"
    "jGsgV9I5UA+pzkYFWH6WBHJWOIK57orv9jW/j7QG4DejJAZYK0lWe/cqAXR9fCTBxe39Dm"
    "dNv+rjH8hqJAc3osdRVL/TCIqWldCffnSPzM0U/u22QsxC3Tupz4jad9Ag42JGQ8SkAJmV"
    "o/1UctovXQ1lRS61HJTutN0bqPUUjtXu9DWg98k6jKRwhnaDuQiKladQ3te1Pugnbil95+"
    "/6h/fDDoH5MirKPrlKMcfY/GIrGe1OmaP6Q6BBSuJLoXhgXVBfoCVwzkEekRQHKaH+A5ur"
    "deNe8M3Bd/9vipgTGywOPaSw1PKjJ2MmKI3X19ODsbnguuW3sP5IdHYClSBtQ6caXJdm8n"
    "4T71JC++TKG2DhbSkb52a2kR2Aw8o2eEQIvAmczSe3o8BSACiuK1TVuKwZUSnIWQzI7Lwk"
    "qrLyQLR1bevAv5LgVCM7/bkRhN8urYVHh2qi4yzXBRC+yttrdFZts3v596vYODo97eweD4"
    "sH90dHi8t7bDyaw8g3w6uqQ2ObKfukZ6Jydss4ysqE1Ajp6w0RFN+LL1BRjl1cHfzoTpCU"
    "fN7B0azmYj4jaMxRMOkBlOh4XvkDiZXBHVG4Z2h2Z/zUTh+oSzVzaGOl8hKtkfFIhK9uOO"
    "TxCV0KxYVGIgnBr7iWR5ZYQjgUgLous8r1P4KkYcTh/ID9fDrx8jTufVZHzpFw8Bf3Y1OY"
    "0BTqeCJANNS9lQf59Nxhl8RkQqHgyoMub+5TQy5wrA75mhhm2vafhTOPLxj0Md8+RpBZn4"
    "p/rnOYxSTK7S1G8Y9jUwS8QMYidlqhfbBALpGi2NbOgm85RLbgZnk+ubK0EUTji/hjt0I4"
    "zPR+PLE86ESCGquEPCdDohewa0LMNqyBbQEVMtoyiKEFM1U76NtnxbIHuTkVDRM6IU0U0e"
    "GDV3u3/lfCiHDZJj55VvZIXix5/vE+JX2aGUiVaWJdomBTKFczIBlqLxAFMPqSP5O3lkiO"
    "WWlDAtun1KpBQZ8X9hIt5EBO/kcAxzoKvaqqSNjQht17rWifVbDt/DERJZJtIS2Mty8VFY"
    "ajPu+s+duFt2EeCTqRIlVHC7o5ItdLvfiZudchKYcgBsVzv9tTcZVzXM+26Tfi34g1i+Ki"
    "qOSnZabrKWO44ke59sL0diQVMDMlHefbqDmem8JwUrXepo2ILejCvf3ZLpbsk0igd59ZZM"
    "hknYALJxDuN92YOiACetYQRn0g1ufHt19bOIJja9Uwgmf9pnE0t05nR8Urv4JKgDVStDfK"
    "wFWsd5HPT2CpAepFQm68Hyops++1sCXr98C66a1HDcbqoydqxSAIdE2ofxXv+4CMikWDbK"
    "LDMK88IwFhqUbOe+DNJRqY0cozbIWmxlPnuQAVmGtu0e4EgQyUnUs6+r5VTRhpPsuu+veX"
    "BGztQqqiS1jk4nlXXi4Vj5XCGnmo6dbDI76W8ssmGmvdN4dSEGgi3wAOpefB01nO0gtJca"
    "7t51tk3rRd51asDGkmYsVFRB8QnhblNtjqrdFZ7g0os8kEz8HyjVX0m29OZhjEGP38arjl"
    "dJ/vzd4LVNunsILVVe8imEt5ezk0d5g6BMx3nXtqNumfOmNif16nQ2lxUSafILzSZxWXRR"
    "lUDYK95CdPf3ipwrkFLZj5j2EucKmQ9Zsx9VZj9kLfeismlo1/GksoSntPnN7OU/bC5GZg"
    "=="
)
